import KeelSystem
import Glibc
import Synchronization

/// `kv`: a small in-memory key-value store with a line protocol (one command per message):
///
/// ```
/// SET key value   -> OK                   (the value is the rest of the line)
/// GET key         -> VALUE value | NOT_FOUND
/// DEL key         -> DELETED | NOT_FOUND
/// COUNT           -> COUNT n
/// SAVE            -> SAVED n              (with `snapshot-file`: written on the work pool, never an I/O thread)
/// anything else   -> ERR reason           (the connection stays up)
/// ```
///
/// Settings: `max-keys` (default 100000; SET of a new key beyond it answers `ERR full`),
/// `max-value-bytes` (default 65536), `snapshot-file` (where SAVE writes `key<TAB>value` lines).
/// The store is split into shards, each behind its own lock, so peers on different I/O threads
/// rarely wait for each other.
public final class KeyValuePlugin: ServerPlugin, PluginSession, Sendable {
    /// The definition for a ``PluginRegistry``.
    public static let definition = PluginDefinition(
        name: "kv", summary: "in-memory key-value store: SET key value, GET key, DEL key, COUNT, SAVE"
    ) { settings, _ in
        let maximumKeys = settings.integer("max-keys", default: 100_000, in: 1...100_000_000)
        let maximumValueBytes = settings.bytes("max-value-bytes", default: 65536, in: 1...(64 << 20))
        let snapshot = settings.string("snapshot-file", default: "")
        return { _ in KeyValuePlugin(maximumKeys: maximumKeys, maximumValueBytes: maximumValueBytes, snapshotFile: snapshot) }
    }

    private static let shardCount = 16
    /// One lock's part of the store.
    private final class Shard: Sendable {
        let table = Locked<[String: [UInt8]]>([:])
    }

    private let shards: [Shard]
    private let keyCount = Atomic<Int>(0)
    private let maximumKeys: Int
    private let maximumValueBytes: Int
    private let snapshotFile: String

    init(maximumKeys: Int, maximumValueBytes: Int, snapshotFile: String) {
        self.maximumKeys = maximumKeys
        self.maximumValueBytes = maximumValueBytes
        self.snapshotFile = snapshotFile
        shards = (0..<Self.shardCount).map { _ in Shard() }
    }

    public func makeSession(for peer: PluginPeer) -> any PluginSession { self }

    private func shard(_ key: String) -> Int {
        var hash: UInt32 = 2_166_136_261  // FNV-1a: stable, cheap, spreads short keys
        for byte in key.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return Int(hash % UInt32(Self.shardCount))
    }

    public func received(_ message: PluginMessage, from peer: PluginPeer) {
        let bytes = message.bytes
        // The command word and the key, split at the first two spaces; the value is the rest, as bytes.
        guard let firstSpace = bytes.firstIndex(of: UInt8(ascii: " ")) else {
            switch String(decoding: bytes, as: UTF8.self) {
            case "COUNT": return peer.send("COUNT \(keyCount.load(ordering: .relaxed))")
            case "SAVE": return save(peer)
            case "": return peer.send("ERR empty command")
            case "SET", "GET", "DEL": return peer.send("ERR missing key")
            case let word: return peer.send("ERR unknown command \(word.prefix(32)); use SET, GET, DEL, COUNT or SAVE")
            }
        }
        let command = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[..<firstSpace]), as: UTF8.self)
        let rest = UnsafeRawBufferPointer(rebasing: bytes[(firstSpace + 1)...])
        let keyEnd = rest.firstIndex(of: UInt8(ascii: " ")) ?? rest.count
        let key = String(decoding: UnsafeRawBufferPointer(rebasing: rest[..<keyEnd]), as: UTF8.self)
        guard !key.isEmpty else { return peer.send("ERR missing key") }
        switch command {
        case "SET":
            guard keyEnd < rest.count else { return peer.send("ERR missing value; use SET key value") }
            let value = UnsafeRawBufferPointer(rebasing: rest[(keyEnd + 1)...])
            guard value.count <= maximumValueBytes else { return peer.send("ERR value longer than \(maximumValueBytes) bytes") }
            let stored = shards[shard(key)].table.withLock { table -> Bool in
                if table[key] == nil {
                    guard keyCount.load(ordering: .relaxed) < maximumKeys else { return false }
                    keyCount.wrappingAdd(1, ordering: .relaxed)
                }
                table[key] = Array(value)
                return true
            }
            peer.send(stored ? "OK" : "ERR full (\(maximumKeys) keys)")
        case "GET" where keyEnd == rest.count:
            let value = shards[shard(key)].table.withLock { $0[key] }
            if let value { peer.send(Array("VALUE ".utf8) + value) } else { peer.send("NOT_FOUND") }
        case "DEL" where keyEnd == rest.count:
            let removed = shards[shard(key)].table.withLock { $0.removeValue(forKey: key) } != nil
            if removed { keyCount.wrappingSubtract(1, ordering: .relaxed) }
            peer.send(removed ? "DELETED" : "NOT_FOUND")
        case "GET", "DEL":
            peer.send("ERR \(command) takes one key")
        default:
            peer.send("ERR unknown command \(command.prefix(32)); use SET, GET, DEL, COUNT or SAVE")
        }
    }

    /// Writes every key to the snapshot file on the work pool, then answers on the peer's thread.
    private func save(_ peer: PluginPeer) {
        guard !snapshotFile.isEmpty else { return peer.send("ERR no snapshot-file configured") }
        let handle = peer.handle
        peer.runBlocking({ [self] () throws -> Int in try writeSnapshot() }) { result in
            switch result {
            case .success(let count): handle.send("SAVED \(count)")
            case .failure(let error): handle.send("ERR save failed: \(error)")
            }
        }
    }

    private struct SnapshotError: Error, CustomStringConvertible {
        let description: String
    }

    private func writeSnapshot() throws -> Int {
        let temporary = snapshotFile + ".tmp"
        guard let file = fopen(temporary, "wb") else { throw SnapshotError(description: String(cString: strerror(errno))) }
        var count = 0
        var failed = false
        for shard in shards {
            let entries = shard.table.withLock { Array($0) }
            for (key, value) in entries {
                let line = Array(key.utf8) + [UInt8(ascii: "\t")] + value + [UInt8(ascii: "\n")]
                failed = failed || fwrite(line, 1, line.count, file) != line.count
                count += 1
            }
        }
        failed = fclose(file) != 0 || failed
        guard !failed, rename(temporary, snapshotFile) == 0 else {
            unlink(temporary)
            throw SnapshotError(description: "cannot write \(snapshotFile)")
        }
        return count
    }
}
