import KeelSystem
import CKeelPluginABI
import Glibc
import Logging
import Synchronization

/// Why a plugin library was refused.
public struct ExternalPluginError: Error, Sendable, CustomStringConvertible {
    /// The library's path.
    public var path: String
    /// What went wrong, and the fix.
    public var detail: String

    public var description: String { "\(path): \(detail)" }
}

/// Plugins loaded from shared libraries through the C ABI of `keel_plugin.h` (Sources/CKeelPluginABI).
/// A library is opened once per process with `RTLD_NOW | RTLD_NODELETE` and never unloaded: unloading
/// one that holds Swift metadata would crash the runtime; a plugin is upgraded by restarting the
/// workers (SIGUSR2).
public enum ExternalPlugins {
    private static let loaded = Locked<[String: PluginDefinition]>([:])

    /// Loads the library at `path` (or returns it, already loaded) as a plugin definition.
    /// - Throws: ``ExternalPluginError`` when it cannot be opened, exports no `keel_plugin_entry`, or
    ///   was built for another ABI version.
    public static func load(_ path: String) throws(ExternalPluginError) -> PluginDefinition {
        if let definition = loaded.withLock({ $0[path] }) { return definition }
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) else {
            let reason = dlerror().map { String(cString: $0) } ?? "unknown error"
            throw ExternalPluginError(path: path, detail: "cannot load the library (\(reason))")
        }
        guard let symbol = dlsym(handle, KEEL_PLUGIN_ENTRY_SYMBOL) else {
            throw ExternalPluginError(path: path, detail: "exports no \(KEEL_PLUGIN_ENTRY_SYMBOL) (fix: define `const keel_plugin *keel_plugin_entry(void)`, see keel_plugin.h)")
        }
        let entry = unsafeBitCast(symbol, to: keel_plugin_entry_function.self)
        guard let descriptor = entry() else {
            throw ExternalPluginError(path: path, detail: "\(KEEL_PLUGIN_ENTRY_SYMBOL) returned NULL")
        }
        let version = descriptor.pointee.abi_version
        guard version == KEEL_PLUGIN_ABI_VERSION else {
            throw ExternalPluginError(
                path: path,
                detail: "built for plugin ABI version \(version), but this keel-server speaks version \(KEEL_PLUGIN_ABI_VERSION) (fix: rebuild the plugin against this keel-server's keel_plugin.h)")
        }
        guard let namePointer = descriptor.pointee.name, descriptor.pointee.create != nil, descriptor.pointee.message != nil else {
            throw ExternalPluginError(path: path, detail: "its keel_plugin lacks a name, create or message")
        }
        let name = String(cString: namePointer)
        let summary = descriptor.pointee.summary.map { String(cString: $0) } ?? "loaded from \(path)"
        let plugin = ExternalDescriptor(descriptor)
        let definition = PluginDefinition(name: name, summary: summary) { settings, _ in
            let values = settings.allValues()
            if let check = plugin.descriptor.pointee.check {
                let outcome = withCStrings(values) { keys, texts, error in check(keys, texts, values.count, error, errorCapacity) }
                if outcome.status != 0 { settings.report("(settings)", problem: outcome.message, fix: "see the plugin's documentation") }
            }
            return { context in try ExternalPlugin(plugin, settings: values, endpoint: context.endpoint) }
        }
        loaded.withLock { $0[path] = definition }
        return definition
    }
}

extension PluginRegistry {
    /// This registry and the plugins of `libraries`.
    /// - Throws: ``ExternalPluginError`` for the first library that cannot be loaded, or whose plugin's
    ///   name is taken.
    public func adding(libraries: [String]) throws(ExternalPluginError) -> PluginRegistry {
        var registry = self
        for path in libraries {
            let definition = try ExternalPlugins.load(path)
            if let existing = registry[definition.name], existing.summary != definition.summary {
                throw ExternalPluginError(path: path, detail: "its plugin is named \"\(definition.name)\", which another plugin has (fix: rename one)")
            }
            registry.register(definition)
        }
        return registry
    }
}

/// A loaded library's descriptor (static data in a library that is never unloaded).
struct ExternalDescriptor: @unchecked Sendable {
    // @unchecked Sendable: points at the library's constant descriptor, which is never written.
    let descriptor: UnsafePointer<keel_plugin>
    init(_ descriptor: UnsafePointer<keel_plugin>) { self.descriptor = descriptor }
}

private let errorCapacity = 512

/// Calls `body` with C arrays of `pairs`' keys and values and an error buffer.
private func withCStrings(
    _ pairs: [(String, String)],
    _ body: (UnsafePointer<UnsafePointer<CChar>?>, UnsafePointer<UnsafePointer<CChar>?>, UnsafeMutablePointer<CChar>) -> Int32
) -> (status: Int32, message: String) {
    let keys = pairs.map { UnsafePointer(strdup($0.0)) }
    let values = pairs.map { UnsafePointer(strdup($0.1)) }
    defer {
        for key in keys { free(UnsafeMutablePointer(mutating: key)) }
        for value in values { free(UnsafeMutablePointer(mutating: value)) }
    }
    let error = UnsafeMutablePointer<CChar>.allocate(capacity: errorCapacity)
    defer { error.deallocate() }
    error.initialize(repeating: 0, count: errorCapacity)
    let status = keys.withUnsafeBufferPointer { keyArray in
        values.withUnsafeBufferPointer { valueArray in
            body(keyArray.baseAddress ?? UnsafePointer(bitPattern: 8)!, valueArray.baseAddress ?? UnsafePointer(bitPattern: 8)!, error)
        }
    }
    return (status, String(cString: error))
}

/// One endpoint's instance of a C plugin.
final class ExternalPlugin: ServerPlugin, @unchecked Sendable {
    // @unchecked Sendable: `state` is the C plugin's, shared by every I/O thread as keel_plugin.h
    // documents (the plugin protects what it holds); this object only passes it back.
    let plugin: ExternalDescriptor
    let state: UnsafeMutableRawPointer

    init(_ plugin: ExternalDescriptor, settings: [(String, String)], endpoint: String) throws {
        self.plugin = plugin
        var made: UnsafeMutableRawPointer?
        let outcome = withCStrings(settings) { keys, values, error in
            made = plugin.descriptor.pointee.create?(hostAPI, keys, values, settings.count, error, errorCapacity)
            return made == nil ? -1 : 0
        }
        guard let made else { throw ExternalPluginError(path: endpoint, detail: outcome.message.isEmpty ? "create failed" : outcome.message) }
        state = made
    }

    func makeSession(for peer: PluginPeer) -> any PluginSession { ExternalSession(self) }

    func stop() { plugin.descriptor.pointee.destroy?(state) }
}

/// One peer's session of a C plugin.
final class ExternalSession: PluginSession {
    let plugin: ExternalPlugin
    var session: UnsafeMutableRawPointer?

    init(_ plugin: ExternalPlugin) {
        self.plugin = plugin
    }

    func opened(_ peer: PluginPeer) {
        session = plugin.plugin.descriptor.pointee.open?(plugin.state, peer.opaque)
    }

    func received(_ message: PluginMessage, from peer: PluginPeer) {
        peer.delivering = message
        plugin.plugin.descriptor.pointee.message?(plugin.state, session, peer.opaque, message.bytes.baseAddress, message.count)
        peer.delivering = nil
    }

    func closed(_ peer: PluginPeer) {
        plugin.plugin.descriptor.pointee.closed?(plugin.state, session, peer.opaque)
        session = nil
    }
}

extension PluginPeer {
    /// The peer as the C ABI sees it: its address, valid while a callback runs.
    var opaque: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    /// The peer behind a C plugin's `keel_peer`.
    static func from(_ opaque: OpaquePointer?) -> PluginPeer? {
        guard let opaque else { return nil }
        return Unmanaged<PluginPeer>.fromOpaque(UnsafeRawPointer(opaque)).takeUnretainedValue()
    }
}

private let pluginLogger = Logger(label: "keel.plugin")

/// The functions the host offers C plugins (one table for the process, never freed).
nonisolated(unsafe) let hostAPI: UnsafeMutablePointer<keel_host_api> = {
    let table = UnsafeMutablePointer<keel_host_api>.allocate(capacity: 1)
    table.initialize(to: keel_host_api(
        abi_version: KEEL_PLUGIN_ABI_VERSION,
        send: { opaque, bytes, length in
            guard let peer = PluginPeer.from(opaque), !peer.isClosed else { return -1 }
            peer.send(UnsafeRawBufferPointer(start: bytes, count: length))
            return 0
        },
        reply: { opaque in
            guard let peer = PluginPeer.from(opaque), !peer.isClosed, let message = peer.delivering else { return -1 }
            peer.reply(with: message)
            return 0
        },
        close: { opaque in PluginPeer.from(opaque)?.close() },
        peer_id: { opaque in UInt64(PluginPeer.from(opaque)?.id ?? 0) },
        log: { level, message in
            guard let message else { return }
            let levels: [Logger.Level] = [.trace, .debug, .info, .notice, .warning, .error, .critical]
            pluginLogger.log(level: levels[Int(max(0, min(6, level)))], "\(String(cString: message))")
        }))
    return table
}()
