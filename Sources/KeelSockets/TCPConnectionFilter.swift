import KeelBuffers

/// A layer between the socket and the handler, like the C++ framework's stackable connection filters.
///
/// A connection carries an ordered stack of filters. Received bytes travel up the stack (filter 0
/// first, then 1, ..., then the handler); writes travel down (the last filter first, ..., filter 0,
/// then the socket). A filter may transform, split, hold back or drop what passes through it, and may
/// originate bytes of its own in either direction (a TLS filter's handshake, for instance).
///
/// Filters are objects so a stack can call into the next layer while one layer is active. A server
/// makes a fresh stack per connection (``TCPServerConfiguration/makeFilters``); connections without
/// filters pay nothing for the mechanism.
///
/// **Threading:** called on the connection's I/O thread only.
public protocol TCPConnectionFilter: AnyObject {
    /// Bytes received from below. Pass them (or what they become) on with ``TCPFilterContext/passInbound(_:)``.
    func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext)
    /// Bytes written from above. Pass them (or what they become) on with ``TCPFilterContext/passOutbound(_:)``.
    func filterOutbound(_ buffer: consuming IOBuffer, context: TCPFilterContext)
}

/// A filter's position in its connection's stack, for passing bytes to the neighbouring layers.
public struct TCPFilterContext {
    /// The connection the filter belongs to.
    public let connection: TCPConnection
    let index: Int

    /// Hands `buffer` to the layer above (the next filter, or the handler).
    public func passInbound(_ buffer: consuming IOBuffer) {
        connection.passInbound(buffer, from: index)
    }

    /// Hands `buffer` to the layer below (the previous filter, or the socket).
    public func passOutbound(_ buffer: consuming IOBuffer) {
        connection.passOutbound(buffer, from: index)
    }
}
