import Logging
import ServiceLifecycle
import UnixSignals

/// A ``ServerHost`` as a swift-service-lifecycle `Service`: run it in a `ServiceGroup` (alone, as
/// keel-server does, or beside an application's other services). Graceful shutdown (the group's
/// SIGTERM or SIGINT, or another service ending) drains the host (``ServerHost/shutdown(deadline:)``);
/// SIGHUP calls `reload` while it runs.
public struct ServerHostService: Service {
    /// The host it runs.
    public let host: ServerHost
    private let reload: @Sendable () async -> Void
    private let started: @Sendable () -> Void
    private let draining: @Sendable () -> Void
    private let drained: @Sendable (_ abandoned: Int) -> Void

    /// A service for `host`. `started` runs once its signals are handled (the group's SIGTERM and
    /// SIGINT, and SIGHUP: announce readiness there, so whoever waits for it may signal at once);
    /// `reload` runs on each SIGHUP; `draining` when the shutdown starts and `drained` after it, with
    /// the number of connections the deadline closed.
    public init(host: ServerHost, started: @escaping @Sendable () -> Void = {}, reload: @escaping @Sendable () async -> Void = {},
                draining: @escaping @Sendable () -> Void = {}, drained: @escaping @Sendable (_ abandoned: Int) -> Void = { _ in }) {
        self.host = host
        self.started = started
        self.reload = reload
        self.draining = draining
        self.drained = drained
    }

    public func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        // The group trapped SIGTERM and SIGINT before starting this service; SIGHUP is trapped now.
        started()
        for await _ in hangups.cancelOnGracefulShutdown() {
            await reload()
        }
        // Graceful shutdown (or cancellation): drain.
        draining()
        drained(await host.shutdown())
    }
}
