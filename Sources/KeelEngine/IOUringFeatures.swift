import Glibc
import Logging

/// Optional io_uring features an I/O thread uses where the kernel has them. Each is probed when the
/// thread's ring is set up and left out, without error, when the kernel lacks it; the pool logs the
/// set in use once per process. Turn features off with ``IOPoolConfiguration/ioUringFeatures`` or the
/// `KEEL_IO_URING_OFF` environment variable (a comma-separated list of names, or `all`).
public struct IOUringFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The ring's own descriptor is registered with its thread, so each `io_uring_enter` skips the
    /// file-table look-up (`IORING_REGISTER_RING_FDS`, Linux 5.18).
    public static let registeredRing = IOUringFeatures(rawValue: 1 << 0)
    /// Large TCP writes go out with `IORING_OP_SENDMSG_ZC` (Linux 6.1): the kernel sends from the
    /// pooled buffers instead of copying them, and holds them until its notification completion. See
    /// ``TCPConnectionOptions``' `zeroCopySendThreshold` in KeelSockets.
    public static let zeroCopySend = IOUringFeatures(rawValue: 1 << 1)

    /// Every feature Keel knows.
    public static let all: IOUringFeatures = [.registeredRing, .zeroCopySend]

    /// Each feature with the name logs, configuration and `KEEL_IO_URING_OFF` use.
    public static let named: [(feature: IOUringFeatures, name: String)] = [
        (.registeredRing, "registered-ring"),
        (.zeroCopySend, "zero-copy-send"),
    ]

    /// Parses a comma-separated list of feature names (`all` and `none` included).
    /// - Returns: nil when a name is unknown.
    public init?(names: String) {
        var features: IOUringFeatures = []
        for raw in names.split(separator: ",") {
            let name = raw.filter { $0 != " " }.lowercased()
            if name == "all" {
                features.formUnion(.all)
            } else if name == "none" || name.isEmpty {
                continue
            } else if let entry = Self.named.first(where: { $0.name == name }) {
                features.formUnion(entry.feature)
            } else {
                return nil
            }
        }
        self = features
    }

    /// The names, comma-separated, or `none`.
    public var description: String {
        let names = Self.named.filter { contains($0.feature) }.map(\.name)
        return names.isEmpty ? "none" : names.joined(separator: ", ")
    }

    /// The environment variable that turns features off: `KEEL_IO_URING_OFF`.
    public static let disablingEnvironmentVariable = "KEEL_IO_URING_OFF"

    /// The features `KEEL_IO_URING_OFF` turns off (none when unset; an unknown name is reported and
    /// ignored).
    public static var turnedOffByEnvironment: IOUringFeatures {
        guard let raw = getenv(disablingEnvironmentVariable).map({ String(cString: $0) }), !raw.isEmpty else { return [] }
        if let features = IOUringFeatures(names: raw) { return features }
        BackendKind.logger.warning("ignoring \(disablingEnvironmentVariable)=\(raw): expected names from \(IOUringFeatures.all) or all")
        return []
    }
}
