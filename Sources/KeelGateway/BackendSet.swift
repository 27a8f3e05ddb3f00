import KeelSystem
import Synchronization

/// A back-end as the gateway sees it right now.
public struct GatewayBackendStatus: Sendable, Hashable {
    /// Its address.
    public var address: SocketAddress
    /// False while it is marked down (after connect failures) and its retry time has not come.
    public var isUp: Bool
    /// Connect failures since its last success.
    public var consecutiveFailures: Int
    /// Connections relayed to it so far.
    public var connections: Int
    /// Connect attempts that failed so far.
    public var failures: Int
}

/// The back-ends, picked round robin, with the health each one's connect attempts showed. Shared by
/// every I/O thread; it is touched once per connect attempt, never per relayed byte.
final class BackendSet: Sendable {
    private struct Health {
        var consecutiveFailures = 0
        var downUntil: ContinuousClock.Instant?
        var backoff: Duration
        var connections = 0
        var failures = 0
    }

    let addresses: [SocketAddress]
    private let failuresBeforeDown: Int
    private let initialBackoff: Duration
    private let maximumBackoff: Duration
    private let next = Atomic<Int>(0)
    // A pthread lock (seen by ThreadSanitizer); held for a few field updates per connect attempt.
    private let health: Locked<[Health]>

    init(_ configuration: TCPGatewayConfiguration) {
        addresses = configuration.backends
        failuresBeforeDown = max(1, configuration.failuresBeforeDown)
        initialBackoff = configuration.retryBackoff
        maximumBackoff = max(configuration.retryBackoff, configuration.maximumRetryBackoff)
        health = Locked(Array(repeating: Health(backoff: configuration.retryBackoff), count: configuration.backends.count))
    }

    /// The back-end to try next: the next one round robin that is up or whose retry time has come,
    /// skipping those in `excluded` (already tried for this client). Nil when none may be tried now.
    func pick(excluding excluded: Set<Int>) -> Int? {
        let start = next.wrappingAdd(1, ordering: .relaxed).oldValue
        let now = ContinuousClock.now
        return health.withLock { health -> Int? in
            for offset in 0..<addresses.count {
                let index = (start &+ offset) % addresses.count
                guard !excluded.contains(index) else { continue }
                if let downUntil = health[index].downUntil, downUntil > now { continue }
                return index
            }
            return nil
        }
    }

    /// A connection to back-end `index` opened: it is up.
    func succeeded(_ index: Int) {
        health.withLock { health in
            health[index].consecutiveFailures = 0
            health[index].downUntil = nil
            health[index].backoff = initialBackoff
            health[index].connections += 1
        }
    }

    /// A connect to back-end `index` failed. - Returns: true when this failure marked it down.
    @discardableResult
    func failed(_ index: Int) -> Bool {
        let now = ContinuousClock.now
        return health.withLock { health -> Bool in
            health[index].failures += 1
            health[index].consecutiveFailures += 1
            guard health[index].consecutiveFailures >= failuresBeforeDown else { return false }
            health[index].downUntil = now + health[index].backoff
            health[index].backoff = min(health[index].backoff * 2, maximumBackoff)
            return true
        }
    }

    /// Each back-end's state.
    var status: [GatewayBackendStatus] {
        let now = ContinuousClock.now
        return health.withLock { health in
            health.indices.map { index in
                GatewayBackendStatus(
                    address: addresses[index], isUp: health[index].downUntil.map { $0 <= now } ?? true,
                    consecutiveFailures: health[index].consecutiveFailures, connections: health[index].connections,
                    failures: health[index].failures)
            }
        }
    }
}
