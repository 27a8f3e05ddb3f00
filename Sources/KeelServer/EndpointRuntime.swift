import KeelEngine
import KeelSockets
import Logging
import Synchronization

/// What every peer of one running endpoint shares: its configuration, its plugin, its counters and,
/// per I/O thread, the peers open there (so a shutdown or a reload can drain them).
final class EndpointRuntime: @unchecked Sendable {
    // @unchecked Sendable: `peers[i]` is touched only on I/O thread i (the outer array never changes);
    // everything else is immutable or atomic.
    final class PeerList: @unchecked Sendable {
        // @unchecked Sendable: confined to its thread (see above).
        var peers: [Int: PluginPeer] = [:]
    }

    let configuration: EndpointConfiguration
    let plugin: any ServerPlugin
    let counters: EndpointCounters
    let threads: [IOThread]
    private let lists: [PeerList]
    /// Set once the endpoint drains: peers close after the message in progress.
    let draining = Atomic<Bool>(false)
    /// Events worth an operator's attention, rate-limited.
    let events = EventLog(label: "keel.server")

    init(configuration: EndpointConfiguration, plugin: any ServerPlugin, threads: [IOThread]) {
        self.configuration = configuration
        self.plugin = plugin
        self.threads = threads
        counters = EndpointCounters(threadCount: threads.count)
        lists = threads.map { _ in PeerList() }
    }

    var name: String { configuration.name }

    /// The next peer id on `thread` (unique in the endpoint: a per-thread sequence interleaved by thread).
    func nextPeerID(on thread: IOThread) -> Int {
        counters.threads[thread.index].opened.load(ordering: .relaxed) * threads.count + thread.index
    }

    /// Records a new peer (on its thread) and makes its session.
    func opened(_ peer: PluginPeer) -> any PluginSession {
        counters.threads[peer.thread.index].peerOpened()
        lists[peer.thread.index].peers[peer.id] = peer
        let session = plugin.makeSession(for: peer)
        if draining.load(ordering: .relaxed) { peer.drain() }
        return session
    }

    /// Logs why a peer was closed when an operator should know (a slow consumer, a bad message).
    func noteClose(_ reason: TCPCloseReason, of peer: PluginPeer) {
        counters.threads[peer.thread.index].closed(because: CloseReasonBucket(reason.code))
        let metadata: Logger.Metadata = ["endpoint": "\(name)", "peer": "\(peer.remoteAddress.map { "\($0)" } ?? "-")", "reason": "\(reason)"]
        if reason == .slowConsumer {
            events.log(.warning, kind: "\(name).slow", "slow consumer closed (its send queue reached flow-control.limit)", metadata: metadata)
        } else if reason.code == .protocolError {
            events.log(.notice, kind: "\(name).bad", "connection closed for a bad message", metadata: metadata)
        }
    }

    /// Forgets a closed peer (on its thread).
    func closed(_ peer: PluginPeer) {
        guard lists[peer.thread.index].peers.removeValue(forKey: peer.id) != nil else { return }
        counters.threads[peer.thread.index].peerClosed()
    }

    /// Peers open now, over every thread.
    var openPeers: Int {
        counters.threads.reduce(0) { $0 + $1.opened.load(ordering: .relaxed) - $1.closed.load(ordering: .relaxed) }
    }

    /// Asks every peer to close once the message it is in the middle of has been answered.
    func startDraining() async {
        guard !draining.exchange(true, ordering: .relaxed) else { return }
        for (index, thread) in threads.enumerated() {
            let list = lists[index]
            _ = try? await thread.submit { for peer in Array(list.peers.values) { peer.drain() } }
        }
    }
}
