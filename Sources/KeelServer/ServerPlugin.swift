import KeelBuffers
import KeelEngine
import KeelSockets
import Logging

/// An endpoint's business logic, without networking code: keel-server accepts the connections (or
/// UDP peers), applies TLS, WebSockets and the framing, and hands the plugin whole messages. One
/// plugin object serves one endpoint, from every I/O thread.
///
/// A plugin makes a ``PluginSession`` per peer; the session holds that peer's state and is called
/// only on the peer's I/O thread, so it needs no locks. State shared between peers (rooms, a store)
/// lives in the plugin and must be safe across threads (a ``PluginGroup``, a lock).
public protocol ServerPlugin: AnyObject, Sendable {
    /// A new peer connected (or a UDP peer sent its first datagram): make its session. Called on the
    /// peer's I/O thread. A stateless plugin may return the same session object for every peer.
    func makeSession(for peer: PluginPeer) -> any PluginSession

    /// The endpoint stopped (shutdown, or removed by a reload). Optional.
    func stop()
}

extension ServerPlugin {
    public func stop() {}
}

/// One peer's state and the plugin's reactions to it.
///
/// **Threading:** every method runs on the peer's I/O thread.
public protocol PluginSession: AnyObject {
    /// The peer may now be sent to. Optional.
    func opened(_ peer: PluginPeer)
    /// A whole message arrived (a frame, a WebSocket message or a datagram). Its bytes are valid only
    /// during the call: copy what you keep, or answer with ``PluginPeer/reply(with:)`` to send the
    /// message itself back without a copy.
    func received(_ message: PluginMessage, from peer: PluginPeer)
    /// The peer is gone (closed by either side, timed out, or the endpoint stopped). Optional.
    func closed(_ peer: PluginPeer)
}

extension PluginSession {
    public func opened(_ peer: PluginPeer) {}
    public func closed(_ peer: PluginPeer) {}
}

/// A received message: the payload (without framing) and, for WebSockets, whether it was text.
public struct PluginMessage {
    /// The payload, valid only during ``PluginSession/received(_:from:)``.
    public let bytes: UnsafeRawBufferPointer
    /// True for a WebSocket text message (UTF-8, already checked).
    public let isText: Bool
    /// The runtime's token for answering with the received buffer itself.
    let token: Int

    /// The payload as a string (invalid UTF-8 is replaced).
    public var string: String { String(decoding: bytes, as: UTF8.self) }
    /// The payload's length.
    public var count: Int { bytes.count }
}

/// What makes an endpoint's plugin: its name, and a function that reads (and checks) its settings and
/// returns what builds the plugin once the server runs. Reading settings must have no side effects:
/// `keel-server --check` and reloads run it without starting anything.
public struct PluginDefinition: Sendable {
    /// The name endpoints give in `plugin:`.
    public var name: String
    /// One line for `keel-server --list-plugins` and errors.
    public var summary: String
    /// Reads the settings for an endpoint of the given transport; returns the plugin's constructor.
    public var prepare: @Sendable (PluginSettingsReader, EndpointConfiguration.Transport) -> @Sendable (PluginContext) throws -> any ServerPlugin

    /// Defines a plugin.
    public init(name: String, summary: String,
                prepare: @escaping @Sendable (PluginSettingsReader, EndpointConfiguration.Transport) -> @Sendable (PluginContext) throws -> any ServerPlugin) {
        self.name = name
        self.summary = summary
        self.prepare = prepare
    }
}

/// What a plugin gets when it is built: the I/O threads (for per-thread state and ``PluginGroup``s),
/// the endpoint's name and a logger.
public struct PluginContext: Sendable {
    /// The server's I/O threads (index `i` is `threads[i].index`).
    public let threads: [IOThread]
    /// The endpoint's name.
    public let endpoint: String
    /// A logger labelled with the endpoint.
    public let logger: Logger
}

/// The plugins a configuration may name.
public struct PluginRegistry: Sendable {
    private var definitions: [String: PluginDefinition] = [:]

    /// An empty registry.
    public init() {}

    /// Echo, chat and the key-value store.
    public static var builtIn: PluginRegistry {
        var registry = PluginRegistry()
        registry.register(EchoPlugin.definition)
        registry.register(ChatPlugin.definition)
        registry.register(KeyValuePlugin.definition)
        return registry
    }

    /// Adds (or replaces) a plugin.
    public mutating func register(_ definition: PluginDefinition) {
        definitions[definition.name] = definition
    }

    /// The plugin named `name`.
    public subscript(name: String) -> PluginDefinition? { definitions[name] }

    /// Every name, sorted.
    public var names: [String] { definitions.keys.sorted() }

    /// Every definition, by name.
    public var all: [PluginDefinition] { names.compactMap { definitions[$0] } }
}
