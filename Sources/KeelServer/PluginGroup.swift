import KeelBuffers
import KeelEngine
import KeelWebSocket
import Synchronization

/// How one kind of peer wants a broadcast framed; a broadcast is prepared once per kind present.
enum BroadcastKind: Int, CaseIterable, Sendable {
    /// Raw and fixed-size TCP framing, UDP datagrams: the payload as it is.
    case unframed
    /// Line framing: the payload and `\n`.
    case line
    /// Length-prefixed framing with a 1, 2, 4 or 8-byte prefix.
    case prefix1, prefix2, prefix4, prefix8
    /// A WebSocket message.
    case webSocket

    /// The prefix width of a length-prefixed kind.
    var prefixBytes: Int? {
        switch self {
        case .prefix1: 1
        case .prefix2: 2
        case .prefix4: 4
        case .prefix8: 8
        default: nil
        }
    }

    static func lengthPrefixed(_ bytes: Int) -> BroadcastKind {
        switch bytes {
        case 1: .prefix1
        case 2: .prefix2
        case 8: .prefix8
        default: .prefix4
        }
    }
}

/// One message prepared for many peers: framed once per kind of peer present (TCP framings,
/// WebSockets, UDP) into shared buffers, then queued to every peer without a copy per peer.
public final class PluginBroadcast: Sendable {
    /// The payload's length.
    public let count: Int
    private let framed: [[SharedBuffer]?]
    let webSocket: WebSocketBroadcast?

    /// Prepares `bytes` for the kinds of peer in `kinds`, with buffers from `pool`.
    init(_ bytes: UnsafeRawBufferPointer, kinds: [BroadcastKind], pool: BufferPool) {
        count = bytes.count
        var framed = [[SharedBuffer]?](repeating: nil, count: BroadcastKind.allCases.count)
        var webSocket: WebSocketBroadcast?
        for kind in kinds {
            switch kind {
            case .webSocket:
                var chain = BufferChain()
                guard chain.append(copying: bytes, from: pool) else { continue }
                var validator = UTF8Validator()
                let isText = validator.validate(bytes) && validator.isAtCharacterBoundary
                webSocket = try? WebSocketBroadcast(isText ? .text : .binary, payload: chain, pool: pool)
            default:
                var header: [UInt8] = []
                if let width = kind.prefixBytes {
                    header = (0..<width).reversed().map { UInt8(truncatingIfNeeded: UInt64(bytes.count) >> (8 * UInt64($0))) }
                }
                var chain = BufferChain()
                let trailer: [UInt8] = kind == .line ? [UInt8(ascii: "\n")] : []
                let copied = header.withUnsafeBytes { chain.append(copying: $0, from: pool) }
                    && chain.append(copying: bytes, from: pool)
                    && trailer.withUnsafeBytes { chain.append(copying: $0, from: pool) }
                guard copied else { continue }
                var shared: [SharedBuffer] = []
                while let buffer = chain.popFirst() { shared.append(buffer.share()) }
                framed[kind.rawValue] = shared
            }
        }
        self.framed = framed
        self.webSocket = webSocket
    }

    /// The shared buffers for one kind (nil when it was not prepared, or the pool ran dry).
    func buffers(for kind: BroadcastKind) -> [SharedBuffer]? { framed[kind.rawValue] }
}

/// A set of peers across every I/O thread that messages can be broadcast to: a chat room, a topic's
/// subscribers. Each thread's members are kept and visited on that thread; a broadcast is framed once
/// per kind of peer and visits each other thread once. Peers leave their groups when they close.
///
/// **Threading:** ``join(_:)``, ``leave(_:)`` and ``broadcast(_:from:except:)`` on the peer's (or
/// sender's) I/O thread; ``count`` anywhere.
public final class PluginGroup: @unchecked Sendable {
    // @unchecked Sendable: `members[i]` is touched only on I/O thread i (the outer array never
    // changes); the counts are atomics.
    final class Members: @unchecked Sendable {
        // @unchecked Sendable: confined to its thread (see above).
        var peers: [Int: PluginPeer] = [:]
    }

    /// The group's name (for messages and logs).
    public let name: String
    private let threads: [IOThread]
    private let members: [Members]
    /// Members of each broadcast kind (a broadcast is framed only for the kinds present).
    private final class KindCount: Sendable {
        let value = Atomic<Int>(0)
    }

    private let kindCounts: [KindCount]
    private let total = Atomic<Int>(0)

    /// An empty group over `threads` (the plugin context's).
    public init(name: String, threads: [IOThread]) {
        self.name = name
        self.threads = threads
        members = threads.map { _ in Members() }
        kindCounts = BroadcastKind.allCases.map { _ in KindCount() }
    }

    /// Members across every thread.
    public var count: Int { total.load(ordering: .relaxed) }

    /// Adds `peer` (on its thread). Joining twice is harmless.
    public func join(_ peer: PluginPeer) {
        guard !peer.isClosed else { return }
        let list = members[peer.thread.index]
        guard list.peers.updateValue(peer, forKey: peer.id) == nil else { return }
        peer.groups.append(self)
        kindCounts[peer.broadcastKind.rawValue].value.wrappingAdd(1, ordering: .relaxed)
        total.wrappingAdd(1, ordering: .relaxed)
    }

    /// Removes `peer` (on its thread).
    public func leave(_ peer: PluginPeer) {
        peer.groups.removeAll { $0 === self }
        remove(peer)
    }

    func remove(_ peer: PluginPeer) {
        guard members[peer.thread.index].peers.removeValue(forKey: peer.id) != nil else { return }
        kindCounts[peer.broadcastKind.rawValue].value.wrappingSubtract(1, ordering: .relaxed)
        total.wrappingSubtract(1, ordering: .relaxed)
    }

    /// True when `peer` is a member (on its thread).
    public func contains(_ peer: PluginPeer) -> Bool { members[peer.thread.index].peers[peer.id] === peer }

    /// Sends `bytes` to every member but `except`: prepared once (see ``PluginBroadcast``), then one
    /// hop per other I/O thread. Call it on `thread`, an I/O thread of the server.
    public func broadcast(_ bytes: UnsafeRawBufferPointer, from thread: IOThread, except: PluginPeer? = nil) {
        let kinds = BroadcastKind.allCases.filter { kindCounts[$0.rawValue].value.load(ordering: .relaxed) > 0 }
        guard !kinds.isEmpty else { return }
        let prepared = PluginBroadcast(bytes, kinds: kinds, pool: thread.bufferPool)
        let skip = except.map { ObjectIdentifier($0) }
        Self.deliver(prepared, to: members[thread.index], skipping: skip)
        for index in members.indices where index != thread.index {
            let list = members[index]
            threads[index].execute { Self.deliver(prepared, to: list, skipping: skip) }
        }
    }

    /// Sends a text broadcast.
    public func broadcast(_ text: String, from thread: IOThread, except: PluginPeer? = nil) {
        var text = text
        text.withUTF8 { broadcast(UnsafeRawBufferPointer($0), from: thread, except: except) }
    }

    private static func deliver(_ broadcast: PluginBroadcast, to list: Members, skipping: ObjectIdentifier?) {
        for peer in list.peers.values where ObjectIdentifier(peer) != skipping { peer.send(broadcast) }
    }
}
