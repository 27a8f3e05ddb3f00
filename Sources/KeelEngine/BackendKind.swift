import KeelSystem
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The kernel interface an ``IOPool``'s threads use.
public enum BackendKind: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// io_uring: completion-based, one ring per I/O thread.
    case ioUring = "io_uring"
    /// epoll: readiness-based, with completions produced in user space.
    case epoll

    public var description: String { rawValue }

    /// Parses `io_uring`/`iouring`/`uring` or `epoll` (case-insensitive).
    public init?(name: String) {
        switch name.lowercased() {
        case "io_uring", "iouring", "uring", "io-uring": self = .ioUring
        case "epoll": self = .epoll
        default: return nil
        }
    }

    /// The name of the environment variable that overrides automatic choice: `KEEL_BACKEND`.
    public static let environmentVariable = "KEEL_BACKEND"

    /// The backend named by `KEEL_BACKEND`, nil when unset. An unknown value is reported and ignored.
    public static var fromEnvironment: BackendKind? {
        guard let raw = getenv(environmentVariable).map({ String(cString: $0) }), !raw.isEmpty else { return nil }
        if let kind = BackendKind(name: raw) { return kind }
        BackendKind.logger.warning("ignoring \(environmentVariable)=\(raw): expected io_uring or epoll")
        return nil
    }

    /// Chooses the backend: `requested` if given, else `KEEL_BACKEND`, else io_uring when the probe
    /// succeeds and epoll otherwise. Logged once per process.
    /// - Throws: ``KeelError/Code-swift.struct/backendUnavailable`` when io_uring is requested explicitly
    ///   and the probe fails.
    public static func resolve(_ requested: BackendKind?) throws(KeelError) -> BackendKind {
        let source: String
        let wanted: BackendKind?
        if let requested {
            (wanted, source) = (requested, "configuration")
        } else if let fromEnvironment {
            (wanted, source) = (fromEnvironment, environmentVariable)
        } else {
            (wanted, source) = (nil, "probe")
        }
        let availability = IOUringSupport.availability
        let chosen: BackendKind
        switch wanted {
        case .ioUring?:
            guard availability == .available else {
                throw KeelError(.backendUnavailable, context: "io_uring requested by \(source) but \(availability)")
            }
            chosen = .ioUring
        case .epoll?:
            chosen = .epoll
        case nil:
            chosen = availability == .available ? .ioUring : .epoll
        }
        logChoiceOnce(chosen, source: source, availability: availability)
        return chosen
    }

    static let logger = Logger(label: "keel.engine")

    private static func logChoiceOnce(_ kind: BackendKind, source: String, availability: IOUringSupport.Availability) {
        let first = loggedChoice.withLock { logged in
            defer { logged = true }
            return !logged
        }
        if first {
            logger.info("keel backend: \(kind) (chosen by \(source); io_uring \(availability))")
        }
    }
}

private let loggedChoice = Locked(false)
