import KeelSystem
import KeelEngine
import Synchronization

/// `echo`: every message goes back to its sender as it came (the received buffer itself, where the
/// transport allows, so an echo copies nothing).
public final class EchoPlugin: ServerPlugin, PluginSession, @unchecked Sendable {
    // @unchecked Sendable: stateless; one object is every peer's session.

    /// The definition for a ``PluginRegistry``.
    public static let definition = PluginDefinition(name: "echo", summary: "sends every message back to its sender") { _, _ in
        { _ in EchoPlugin() }
    }

    public func makeSession(for peer: PluginPeer) -> any PluginSession { self }

    public func received(_ message: PluginMessage, from peer: PluginPeer) {
        peer.reply(with: message)
    }
}

/// `chat`: line chat in rooms. A message is broadcast to the sender's room as `NAME: TEXT` (the
/// sender gets it too); commands: `/nick NAME`, `/join ROOM`, `/msg NAME TEXT` (to one member, from
/// any thread), `/who` (the room's size). Settings: `room` (the room new members join, default
/// `lobby`), `max-rooms` (default 1000).
public final class ChatPlugin: ServerPlugin, Sendable {
    /// The definition for a ``PluginRegistry``.
    public static let definition = PluginDefinition(
        name: "chat", summary: "line chat in rooms: /nick NAME, /join ROOM, /msg NAME TEXT, /who"
    ) { settings, _ in
        let room = settings.string("room", default: "lobby")
        if room.isEmpty || room.contains(" ") { settings.report("room", problem: "\"\(room)\" is not a room name", fix: "use one word") }
        let maximumRooms = settings.integer("max-rooms", default: 1000, in: 1...1_000_000)
        return { context in ChatPlugin(threads: context.threads, defaultRoom: room, maximumRooms: maximumRooms) }
    }

    private struct Directory {
        var rooms: [String: PluginGroup] = [:]
        var names: [String: PluginPeerHandle] = [:]
    }

    private let threads: [IOThread]
    private let defaultRoom: String
    private let maximumRooms: Int
    private let directory = Locked(Directory())

    init(threads: [IOThread], defaultRoom: String, maximumRooms: Int) {
        self.threads = threads
        self.defaultRoom = defaultRoom
        self.maximumRooms = maximumRooms
    }

    public func makeSession(for peer: PluginPeer) -> any PluginSession { Member(plugin: self) }

    /// The room named `name`, made on first use (nil past `max-rooms`).
    func room(_ name: String) -> PluginGroup? {
        directory.withLock { directory in
            if let room = directory.rooms[name] { return room }
            guard directory.rooms.count < maximumRooms else { return nil }
            let room = PluginGroup(name: name, threads: threads)
            directory.rooms[name] = room
            return room
        }
    }

    /// Claims `name` for `peer`; false when another member has it.
    func claim(_ name: String, for peer: PluginPeer, releasing old: String) -> Bool {
        directory.withLock { directory in
            if let holder = directory.names[name], holder != peer.handle { return false }
            if directory.names[old] == peer.handle { directory.names[old] = nil }
            directory.names[name] = peer.handle
            return true
        }
    }

    func release(_ name: String, of peer: PluginPeer) {
        directory.withLock { directory in
            if directory.names[name] == peer.handle { directory.names[name] = nil }
        }
    }

    func member(named name: String) -> PluginPeerHandle? { directory.withLock { $0.names[name] } }

    /// One member's name and room.
    final class Member: PluginSession {
        let plugin: ChatPlugin
        var name = ""
        var room: PluginGroup?

        init(plugin: ChatPlugin) {
            self.plugin = plugin
        }

        func opened(_ peer: PluginPeer) {
            name = "guest\(peer.id)"
            _ = plugin.claim(name, for: peer, releasing: "")
            room = plugin.room(plugin.defaultRoom)
            room?.join(peer)
        }

        func received(_ message: PluginMessage, from peer: PluginPeer) {
            let line = message.string
            guard line.hasPrefix("/") else {
                room?.broadcast("\(name): \(line)", from: peer.thread)
                return
            }
            let parts = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true).map(String.init)
            switch parts.first {
            case "/nick" where parts.count == 2:
                if plugin.claim(parts[1], for: peer, releasing: name) {
                    room?.broadcast("* \(name) is now \(parts[1])", from: peer.thread)
                    name = parts[1]
                } else {
                    peer.send("ERR name \(parts[1]) is taken")
                }
            case "/join" where parts.count == 2:
                guard let next = plugin.room(parts[1]) else { return peer.send("ERR too many rooms") }
                room?.leave(peer)
                room = next
                next.join(peer)
                peer.send("OK joined \(parts[1]) (\(next.count) members)")
            case "/msg" where parts.count == 3:
                guard let target = plugin.member(named: parts[1]) else { return peer.send("ERR no member \(parts[1])") }
                target.send("\(name) (private): \(parts[2])")
            case "/who":
                peer.send("OK \(room?.name ?? "-") has \(room?.count ?? 0) members")
            default:
                peer.send("ERR unknown command; use /nick NAME, /join ROOM, /msg NAME TEXT or /who")
            }
        }

        func closed(_ peer: PluginPeer) {
            plugin.release(name, of: peer)
            room = nil
        }
    }
}
