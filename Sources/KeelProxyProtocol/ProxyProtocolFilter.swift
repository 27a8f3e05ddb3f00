import Glibc
import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem

/// How a listener takes PROXY protocol headers.
public struct ProxyProtocolConfiguration: Sendable, Hashable {
    /// Who must send a header.
    public enum Mode: Sendable, Hashable {
        /// Every connection starts with a header (the listener is reachable only through the balancer).
        case required
        /// Connections from these sources must start with a header; any other connection must not
        /// (one that does is refused: only a trusted proxy may name another client).
        case trusted([ProxyAddressRange])
    }

    public var mode: Mode
    /// How long a connection may take to send its header; then it is closed. The spec asks for at
    /// least 3 seconds, to cover a TCP retransmission.
    public var headerTimeout: Duration
    /// The largest v2 header accepted, TLVs included (v1 lines are at most 107 bytes). At most the
    /// size of a pooled buffer.
    public var maximumHeaderSize: Int

    /// A configuration; by default a header is required within 5 seconds, at most 4 KiB.
    public init(mode: Mode = .required, headerTimeout: Duration = .seconds(5), maximumHeaderSize: Int = 4096) {
        self.mode = mode
        self.headerTimeout = headerTimeout
        self.maximumHeaderSize = maximumHeaderSize
    }

    /// Whether a connection from `peer` must send a header.
    public func expectsHeader(from peer: SocketAddress?) -> Bool {
        switch mode {
        case .required: return true
        case .trusted(let ranges): return peer.map { address in ranges.contains { $0.contains(address) } } ?? false
        }
    }
}

/// Reads the PROXY protocol header a load balancer puts in front of a connection, as the bottom filter
/// of its stack (below TLS: the header comes first, then the handshake).
///
/// It holds the connection's opening back until the header is in, makes ``KeelSockets/TCPConnection/remoteAddress``
/// and ``KeelSockets/TCPConnection/localAddress`` report the original client and destination (a LOCAL
/// or UNKNOWN header keeps the real ones), then leaves the stack and lets the connection open; the
/// handler finds the header (its TLVs) with `connection.filter(ofType: ProxyProtocolFilter.self)?.header`.
/// A missing, malformed, oversized, late or truncated header closes the connection before any byte
/// reaches the layers above (``KeelSockets/TCPCloseReason/Code/proxyProtocolError``,
/// ``KeelSockets/TCPCloseReason/Code/proxyHeaderTimeout``).
///
/// In ``ProxyProtocolConfiguration/Mode/trusted(_:)`` mode a connection from an untrusted source opens
/// at once; the filter only checks that its first bytes are not a PROXY header.
///
/// Reusable (``KeelSockets/TCPReusableFilter``): with no other filter on the listener, a connection
/// object's next peer reuses it, and accepting a connection with a header allocates nothing. Read the
/// header during the connection (``KeelSockets/TCPConnection/proxyHeader``), not after its close.
public final class ProxyProtocolFilter: TCPReusableFilter {
    /// The header read, once it has been.
    public private(set) var header: ProxyHeader?
    /// True when this connection must send a header; false when it must not.
    public private(set) var expectsHeader: Bool
    private let configuration: ProxyProtocolConfiguration
    private var held: IOBuffer?
    private var timer: TimerHandle?
    private var done = false
    /// The connection's context while the header timer runs.
    private var timedContext: TCPFilterContext?
    /// The header timer's callback, made once per filter: a reused filter sets timers without allocating.
    private lazy var timerFired: () -> Void = { [unowned self] in
        timer = nil
        if let context = timedContext.take() { timedOut(context) }
    }

    /// A filter for one connection; `expectsHeader` from the configuration and the peer's address.
    public init(configuration: ProxyProtocolConfiguration, expectsHeader: Bool) {
        self.configuration = configuration
        self.expectsHeader = expectsHeader
    }

    /// Reset for the next peer of a recycled connection: nothing of the last one is kept.
    public func prepareForNextConnection(_ setup: TCPFilterSetup) -> Bool {
        header = nil
        held = nil
        timer = nil
        timedContext = nil
        done = false
        expectsHeader = configuration.expectsHeader(from: setup.remoteAddress)
        return true
    }

    public func connectionEstablished(context: TCPFilterContext) {
        timedContext = context
        timer = context.connection.thread.scheduleTimer(after: configuration.headerTimeout, timerFired)
        if !expectsHeader { context.passEstablished() }  // it opens now; only its first bytes are checked
    }

    public func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        guard !done else { return context.passInbound(buffer) }
        var incoming = buffer
        guard var data = held.take() else { return examine(incoming, overflow: nil, context: context) }
        let moved = incoming.withUnsafeReadableBytes { data.append($0) }
        incoming.consume(moved)
        examine(data, overflow: incoming, context: context)
    }

    /// Looks at everything received so far (`data`; `overflow` is what did not fit in its buffer).
    private func examine(_ data: consuming IOBuffer, overflow: consuming IOBuffer?, context: TCPFilterContext) {
        var data = data
        if !expectsHeader { return screen(data, overflow: overflow, context: context) }
        let limit = configuration.maximumHeaderSize
        let outcome = data.withUnsafeReadableBytes { bytes in
            Result { () throws(ProxyProtocolError) in try ProxyHeaderParser.parse(bytes, maximumV2Length: limit) }
        }
        switch outcome {
        case .failure(let error):
            refuse(error, context: context)
        case .success(.incomplete):
            if let rest = overflow, rest.readableBytes > 0 {
                return refuse(ProxyProtocolError(.tooLarge, "a header longer than a pooled buffer"), context: context)
            }
            held = consume data
        case .success(.complete(let header, let length)):
            data.consume(length)
            accept(header, context: context)
            if data.readableBytes > 0 { context.passInbound(data) }
            if let rest = overflow, rest.readableBytes > 0 { context.passInbound(rest) }
        }
    }

    /// An untrusted connection: refused if it starts with a PROXY header, passed on once its first
    /// bytes cannot be one.
    private func screen(_ data: consuming IOBuffer, overflow: consuming IOBuffer?, context: TCPFilterContext) {
        let verdict = data.withUnsafeReadableBytes { ProxyHeaderScreen.judge($0) }
        switch verdict {
        case .header:
            let peer = context.connection.remoteAddress.map { "\($0)" } ?? "an unknown address"
            refuse(ProxyProtocolError(.notProxyProtocol, "a PROXY header from \(peer), which is not a trusted proxy"), context: context)
        case .undecided:
            held = consume data
        case .clear:
            finish(context)
            context.passInbound(data)
            if let rest = overflow, rest.readableBytes > 0 { context.passInbound(rest) }
        }
    }

    private func accept(_ header: ProxyHeader, context: TCPFilterContext) {
        self.header = header
        if let source = header.sourceAddress, let destination = header.destinationAddress {
            context.setRemoteAddress(source)
            context.setLocalAddress(destination)
        }
        finish(context)
        context.passEstablished()
    }

    /// Done: the timer goes, and so does the filter (it stays findable for its header).
    private func finish(_ context: TCPFilterContext) {
        done = true
        cancelTimer(context)
        context.removeFilter()
    }

    private func refuse(_ error: ProxyProtocolError, context: TCPFilterContext) {
        done = true
        held = nil
        cancelTimer(context)
        context.close(.abortive, reason: TCPCloseReason(.proxyProtocolError, detail: error.description))
    }

    private func timedOut(_ context: TCPFilterContext) {
        guard !done, !context.isDetached else { return }
        if expectsHeader {
            held = nil
            done = true
            return context.close(.abortive, reason: TCPCloseReason(.proxyHeaderTimeout, detail: "no PROXY header within \(configuration.headerTimeout)"))
        }
        // An untrusted peer that sent the first bytes of a signature and stopped: they were its data.
        finish(context)
        if let data = held.take() { context.passInbound(data) }
    }

    public func peerHalfClosed(context: TCPFilterContext) {
        guard !done else { return context.passPeerHalfClosed() }
        if expectsHeader {
            return refuse(ProxyProtocolError(.badLength, "the connection ended before its PROXY header was complete"), context: context)
        }
        finish(context)
        if let data = held.take() { context.passInbound(data) }
        context.passPeerHalfClosed()
    }

    public func connectionClosed(_ reason: TCPCloseReason, context: TCPFilterContext) {
        cancelTimer(context)
        held = nil
    }

    private func cancelTimer(_ context: TCPFilterContext) {
        if let timer { _ = context.connection.thread.cancelTimer(timer) }
        timer = nil
        timedContext = nil
    }
}

/// Tells whether the first bytes of an untrusted connection are (the start of) a PROXY header.
enum ProxyHeaderScreen {
    enum Verdict { case header, undecided, clear }

    static func judge(_ bytes: UnsafeRawBufferPointer) -> Verdict {
        func matches(_ signature: [UInt8]) -> Bool {
            zip(bytes, signature).allSatisfy { $0 == $1 }
        }
        let v1 = matches(ProxyHeaderParser.v1Prefix), v2 = matches(ProxyHeaderParser.v2Signature)
        if (v1 && bytes.count >= ProxyHeaderParser.v1Prefix.count) || (v2 && bytes.count >= ProxyHeaderParser.v2Signature.count) {
            return .header
        }
        return v1 || v2 ? .undecided : .clear
    }
}

/// Sends a PROXY protocol header as a connection opens, before anything else (below TLS), then leaves
/// the stack: for gateways that relay connections to another PROXY-aware server.
public final class ProxyHeaderSender: TCPConnectionFilter {
    private let bytes: [UInt8]

    /// A sender of `header` (with a CRC32C TLV when `checksum`, for version 2).
    public init(_ header: ProxyHeader, checksum: Bool = false) {
        bytes = header.encoded(checksum: checksum)
    }

    public func connectionEstablished(context: TCPFilterContext) {
        var remaining = bytes[...]
        while !remaining.isEmpty {
            guard var buffer = try? context.bufferPool.acquire() else {
                return context.close(.abortive, reason: TCPCloseReason(.resourceExhausted, detail: "no buffer for the PROXY header"))
            }
            let count = buffer.append(contentsOf: remaining.prefix(buffer.writableBytes))
            remaining = remaining.dropFirst(count)
            context.passOutbound(buffer)
        }
        context.removeFilter()
        context.passEstablished()
    }
}

extension TCPConnection {
    /// The PROXY protocol header this connection started with, if its listener reads them and it sent one.
    public var proxyHeader: ProxyHeader? { filter(ofType: ProxyProtocolFilter.self)?.header }
}

extension AsyncTCPConnection {
    /// The PROXY protocol header this connection started with (see ``KeelSockets/TCPConnection/proxyHeader``).
    public var proxyHeader: ProxyHeader? {
        get async { await withConnection { $0.proxyHeader } ?? nil }
    }
}

extension TCPCloseReason.Code {
    /// A PROXY protocol header was missing, malformed, too large, cut short, or sent by an untrusted peer.
    public static let proxyProtocolError = Self("proxy.protocolError")
    /// No complete PROXY protocol header arrived within the header timeout.
    public static let proxyHeaderTimeout = Self("proxy.headerTimeout")
}

extension TCPConnectionOptions {
    /// Reads a PROXY protocol header on every connection these options open (a listener's), as the
    /// bottom filter: below TLS and any other filter already configured.
    public mutating func acceptProxyProtocol(_ configuration: ProxyProtocolConfiguration = ProxyProtocolConfiguration()) {
        let others = makeFilters
        makeFilters = { setup in
            let filter = ProxyProtocolFilter(configuration: configuration, expectsHeader: configuration.expectsHeader(from: setup.remoteAddress))
            guard let others else { return [filter] }
            return [filter] + others(setup)
        }
    }

    /// Sends `header` first on every connection these options make (a connector's), below TLS.
    public mutating func sendProxyHeader(_ header: ProxyHeader, checksum: Bool = false) {
        let others = makeFilters
        makeFilters = { setup in
            guard let others else { return [ProxyHeaderSender(header, checksum: checksum)] }
            return [ProxyHeaderSender(header, checksum: checksum)] + others(setup)
        }
    }
}
