import KeelBuffers
import KeelEngine
import KeelFraming
import KeelSockets
import KeelSystem
import Synchronization

/// A line-based TCP chat room: every line a member sends is broadcast to every member, including the
/// sender, as `name: line\n`.
///
/// Each line becomes one ``SharedBuffer`` sent to every member, never one copy per member. Members
/// live on their own I/O threads; a broadcast visits each thread once. Write flow control bounds what
/// the server keeps for a stalled member: past the hard limit that member is disconnected
/// (``TCPCloseReason/slowConsumer``) instead of growing the server's memory.
public final class ChatServer: Sendable {
    private let server: TCPServer<ChatMember>
    private let room: ChatRoom

    /// Starts a chat server.
    /// - Parameter perMemberLimit: the most bytes queued for one member before it is disconnected.
    public init(pool: IOPool, host: String = "127.0.0.1", port: UInt16 = 7008, perMemberLimit: Int = 1024 * 1024)
        throws(SystemError)
    {
        let room = ChatRoom(threads: pool.threads)
        self.room = room
        var configuration = TCPServerConfiguration(host: host, port: port)
        configuration.connection.flowControl = TCPFlowControl(
            highWatermark: perMemberLimit / 4, lowWatermark: perMemberLimit / 16, hardLimit: perMemberLimit, policy: .refuse)
        server = try TCPServer(pool: pool, configuration: configuration) { ChatMember(room: room) }
    }

    /// The bound address.
    public var localAddress: SocketAddress { server.localAddress }
    /// Connection counters.
    public var statistics: TCPServerStatistics { server.statistics }
    /// Members disconnected for reading too slowly.
    public var slowConsumersDisconnected: Int { room.slowConsumers.load(ordering: .relaxed) }
    /// Lines broadcast so far.
    public var linesBroadcast: Int { room.lines.load(ordering: .relaxed) }

    /// Stops accepting and closes every member.
    public func stop() async { await server.stop() }
}

/// The members of the room, one list per I/O thread (each touched only on its thread).
final class ChatRoom: @unchecked Sendable {
    // @unchecked Sendable: `members[i].connections` is touched only on I/O thread i (the outer array is
    // immutable, so threads never write shared storage); counters are atomics.
    final class Members: @unchecked Sendable {
        // @unchecked Sendable: touched only on the I/O thread it belongs to.
        var connections: [TCPConnection] = []
    }

    private let members: [Members]
    private let threads: [IOThread]
    let slowConsumers = Atomic<Int>(0)
    let lines = Atomic<Int>(0)
    private let next = Atomic<Int>(0)

    init(threads: [IOThread]) {
        self.threads = threads
        members = threads.map { _ in Members() }
    }

    func join(_ connection: TCPConnection) {
        members[connection.thread.index].connections.append(connection)
    }

    func leave(_ connection: TCPConnection) {
        members[connection.thread.index].connections.removeAll { $0 === connection }
    }

    func nextGuestNumber() -> Int { next.wrappingAdd(1, ordering: .relaxed).newValue }

    /// Sends `line` to every member: one shared payload, one hop per other I/O thread.
    func broadcast(_ line: SharedBuffer, from thread: IOThread, pool: IOPool?) {
        lines.wrappingAdd(1, ordering: .relaxed)
        for member in members[thread.index].connections { member.write(line) }
        // Other threads' lists are read only on their own threads.
        for index in members.indices where index != thread.index {
            let list = members[index]
            threads[index].execute {
                for member in list.connections { member.write(line) }
            }
        }
    }
}

/// One member: frames its input into lines and broadcasts each as `name: line`.
struct ChatMember: TCPConnectionHandler {
    /// The member's partial line between reads (a class: the accumulator is noncopyable).
    final class LineBuffer {
        var accumulator = FrameAccumulator(decoder: LineDecoder(maximumLineBytes: 4096))
    }

    let room: ChatRoom
    var name = ""
    var lines = LineBuffer()

    mutating func connectionEstablished(_ connection: TCPConnection) {
        name = "guest\(room.nextGuestNumber())"
        room.join(connection)
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        let thread = connection.thread
        let prefix = Array("\(name): ".utf8)
        let room = self.room
        do {
            try lines.accumulator.feed(buffer) { line in
                guard var out = try? thread.bufferPool.acquire() else { return }
                out.append(contentsOf: prefix)
                out.append(line)
                out.append(contentsOf: CollectionOfOne(UInt8(ascii: "\n")))
                room.broadcast(out.share(), from: thread, pool: nil)
            }
        } catch {
            connection.close(.abortive)  // a line longer than 4 KiB: not a chat client
        }
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        if reason == .slowConsumer { room.slowConsumers.wrappingAdd(1, ordering: .relaxed) }
        room.leave(connection)
        lines.accumulator.discard()
    }
}
