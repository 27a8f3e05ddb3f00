import CKeelOpenSSL
import KeelBuffers
import KeelEngine
import KeelSockets

/// TLS on a connection: a filter that runs the handshake when the connection opens, decrypts what
/// arrives into pooled buffers for the layers above, encrypts what they write into pooled buffers for
/// the socket, and sends close_notify when a close is requested. Handlers see plaintext and need no
/// change; they see ``TCPConnectionHandler/connectionEstablished(_:)`` once the handshake is done.
///
/// Records move between OpenSSL and pooled buffers through a BIO over the buffers' own memory: the
/// only copies are the ones OpenSSL makes itself (into its record buffer, and out of it decrypted).
///
/// Put it at the bottom of the stack (``TCPConnectionOptions/useTLS(_:)``); one per connection.
/// Read its state from a handler with `connection.filter(ofType: TLSFilter.self)`.
public final class TLSFilter: TCPConnectionFilter {
    /// The context this connection's TLS session is made from.
    public let tlsContext: TLSContext
    /// The ALPN protocol agreed on (nil: none, or before the handshake finished).
    public private(set) var applicationProtocol: String?
    /// The protocol version agreed on (nil before the handshake finished).
    public private(set) var version: TLSVersion?
    /// The peer's certificate, when it sent one (a server always does; a client under mutual TLS).
    public private(set) var peerCertificate: TLSCertificateSummary?
    /// True once the handshake finished.
    public private(set) var isHandshakeComplete = false
    /// True when this session was resumed from an earlier one (no full handshake).
    public private(set) var isResumed = false

    private var ssl: OpaquePointer?
    /// The BIO's view of the current input and output regions (set around each SSL call).
    private let io: UnsafeMutablePointer<ckeel_tls_io>
    /// What the layers above wrote before the handshake finished, sent once it has.
    private var pendingWrites: [DetachedBuffer] = []
    /// Small writes of this loop iteration, gathered to be sealed as one record at the flush.
    private var heldPlaintext: DetachedBuffer?
    /// Records not yet passed down, in a buffer with room for more (passed down at the flush).
    private var pendingOutput: DetachedBuffer?
    private var handshakeTimer: TimerHandle?
    private var receivedCloseNotify = false
    private var sentCloseNotify = false
    private var passedHalfClose = false
    private var failed = false
    /// This connection counts against the context's handshake cap until its handshake ends.
    private var holdsHandshakeSlot = false
    /// Ciphertext passed down, not yet reported sent, and the plaintext each part carries (FIFO), so
    /// write completions reach the layers above in their own bytes.
    private var unsentRecords: [(cipher: Int, plain: Int)] = []
    private var unsentRecordsHead = 0
    private var sentCipherCarry = 0

    /// A filter for one connection, from `context`.
    public init(context: TLSContext) {
        tlsContext = context
        io = .allocate(capacity: 1)
        io.initialize(to: ckeel_tls_io())
    }

    deinit {
        if holdsHandshakeSlot { tlsContext.endHandshake() }
        if let ssl { SSL_free(ssl) }
        for buffer in pendingWrites { buffer.release() }
        heldPlaintext?.release()
        pendingOutput?.release()
        io.deallocate()
    }

    // MARK: Opening

    public func connectionEstablished(context: TCPFilterContext) {
        start(context: context)
    }

    public func filterAdded(context: TCPFilterContext) {
        start(context: context)  // added to an open connection (STARTTLS): the handshake starts now
    }

    private func start(context: TCPFilterContext) {
        guard ssl == nil else { return }
        guard tlsContext.beginHandshake() else {
            failed = true
            return context.close(.abortive, reason: TCPCloseReason(
                .tlsHandshakeLimit, detail: "\(tlsContext.handshakesNow) handshakes in progress"))
        }
        holdsHandshakeSlot = true
        guard let ssl = SSL_new(tlsContext.context) else {
            return context.close(.abortive, reason: TCPCloseReason(.resourceExhausted, detail: "SSL_new failed: \(openSSLError())"))
        }
        self.ssl = ssl
        guard let bio = ckeel_tls_bio_new(io) else {
            return context.close(.abortive, reason: TCPCloseReason(.resourceExhausted, detail: "BIO_new failed: \(openSSLError())"))
        }
        SSL_set_bio(ssl, bio, bio)  // one reference, owned by the SSL from here
        let configuration = tlsContext.configuration
        let thread = context.connection.thread
        // A strong capture, not a weak one: a weak reference would give the filter a side table and
        // send every later retain and release of it down the runtime's slow path. The cycle it makes
        // (the timer wheel holds the closure) ends when the timer fires or is cancelled, which the
        // handshake's end, a failure and the connection's close each do.
        handshakeTimer = thread.scheduleTimer(after: configuration.handshakeTimeout) { [self] in
            guard !isHandshakeComplete else { return }
            handshakeTimer = nil
            fail(.tlsHandshakeTimeout, detail: "no finished handshake within \(configuration.handshakeTimeout)",
                      mode: .abortive, context: context)
        }
        if configuration.role == .client {
            SSL_set_connect_state(ssl)
            if let name = configuration.serverName {
                _ = ckeel_ssl_set_tlsext_host_name(ssl, name)
                if case .required = configuration.peerVerification { _ = SSL_set1_host(ssl, name) }
                if configuration.resumesSessions { tlsContext.offerSession(to: ssl, serverName: name) }
            }
            advanceHandshake(context: context)  // the ClientHello
        } else {
            SSL_set_accept_state(ssl)
        }
    }

    // MARK: Inbound

    public func filterInbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        guard ssl != nil, !failed else { return }
        buffer.withUnsafeReadableBytes { bytes in
            io.pointee.input = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self)
            io.pointee.input_length = bytes.count
            if !isHandshakeComplete { advanceHandshake(context: context) }
            if isHandshakeComplete { readPlaintext(context: context) }
            io.pointee.input = nil
            io.pointee.input_length = 0
        }
    }

    private func advanceHandshake(context: TCPFilterContext) {
        guard let ssl, !failed else { return }
        let (result, error) = perform(context) { SSL_do_handshake($0) }
        if result == 1 {
            handshakeFinished(ssl: ssl, context: context)
        } else if error != SSL_ERROR_WANT_READ {
            fail(.tlsHandshakeFailed, detail: handshakeFailure(ssl: ssl, error: error), mode: .graceful, context: context)
        }
    }

    private func releaseHandshakeSlot() {
        guard holdsHandshakeSlot else { return }
        holdsHandshakeSlot = false
        tlsContext.endHandshake()
    }

    private func handshakeFinished(ssl: OpaquePointer, context: TCPFilterContext) {
        isHandshakeComplete = true
        releaseHandshakeSlot()
        if let handshakeTimer { context.connection.thread.cancelTimer(handshakeTimer) }
        handshakeTimer = nil
        version = SSL_version(ssl) == TLS1_3_VERSION ? .tls13 : .tls12
        isResumed = SSL_session_reused(ssl) == 1
        var protocolName: UnsafePointer<UInt8>?
        var protocolLength: UInt32 = 0
        ckeel_ssl_get_alpn_selected(ssl, &protocolName, &protocolLength)
        if let protocolName, protocolLength > 0 {
            applicationProtocol = String(decoding: UnsafeBufferPointer(start: protocolName, count: Int(protocolLength)), as: UTF8.self)
        }
        if let certificate = SSL_get1_peer_certificate(ssl) {
            peerCertificate = TLSCertificateSummary(certificate)
            X509_free(certificate)
        }
        context.passEstablished()
        let waiting = pendingWrites
        pendingWrites.removeAll()
        for buffer in waiting { filterOutbound(buffer.reattach(), context: context) }
    }

    /// Decrypts what OpenSSL can, gathering consecutive records into one buffer, so the layers above
    /// see one delivery (and answer with one write) per burst rather than one per record.
    private func readPlaintext(context: TCPFilterContext) {
        while ssl != nil && !failed && !receivedCloseNotify {
            guard var plaintext = try? context.bufferPool.acquire() else {
                return fail(.resourceExhausted, detail: "no buffer for decrypted bytes", mode: .abortive, context: context)
            }
            var error = SSL_ERROR_NONE
            while plaintext.writableBytes > 0 {
                let (result, code) = plaintext.withUnsafeMutableWritableBytes { region in
                    perform(context) { SSL_read($0, region.baseAddress, Int32(clamping: region.count)) }
                }
                guard result > 0 else {
                    error = code
                    break
                }
                plaintext.moveWriterIndex(forwardBy: Int(result))
                // Nothing left to decrypt (all input taken, no record or plaintext buffered inside
                // OpenSSL): another SSL_read would only say so, at the price of a call and an error.
                if io.pointee.input_length == 0 && SSL_has_pending(ssl) == 0 {
                    error = SSL_ERROR_WANT_READ
                    break
                }
            }
            if plaintext.readableBytes > 0 { context.passInbound(plaintext) } else { _ = consume plaintext }
            switch error {
            case SSL_ERROR_NONE:
                continue  // the buffer filled up: more may follow
            case SSL_ERROR_WANT_READ:
                return
            case SSL_ERROR_ZERO_RETURN:
                receivedCloseNotify = true  // the peer's close_notify: a clean end of its stream
                passHalfClose(context: context)
            default:
                fail(.tlsProtocolError, detail: openSSLError(), mode: .graceful, context: context)
            }
        }
    }

    public func peerHalfClosed(context: TCPFilterContext) {
        if receivedCloseNotify || failed {
            passHalfClose(context: context)
        } else if !isHandshakeComplete {
            fail(.tlsHandshakeFailed, detail: "the peer closed the connection during the handshake", mode: .graceful, context: context)
        } else {
            fail(.tlsTruncated, detail: "TCP end of stream without a TLS close_notify", mode: .graceful, context: context)
        }
    }

    private func passHalfClose(context: TCPFilterContext) {
        guard !passedHalfClose else { return }
        passedHalfClose = true
        context.passPeerHalfClosed()
    }

    // MARK: Outbound

    public func filterOutbound(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        guard ssl != nil, !failed, !sentCloseNotify, buffer.readableBytes > 0 else { return }
        guard isHandshakeComplete else { return pendingWrites.append(buffer.detach()) }
        // Small writes made in one loop iteration become one record, sealed when the connection
        // flushes: one encryption and one record header for a burst (a pipelined batch of replies)
        // rather than one per write. The first write's own buffer gathers the rest when it has room.
        let size = buffer.readableBytes
        if var held = heldPlaintext?.reattach() {
            heldPlaintext = nil
            if held.writableBytes >= size {
                _ = buffer.withUnsafeReadableBytes { held.append($0) }
                heldPlaintext = held.detach()
                return
            }
            encrypt(held, context: context)
            guard ssl != nil, !failed else { return }
        }
        if size <= Self.gatheredWriteLimit && context.requestFlush() {
            heldPlaintext = buffer.detach()
            return
        }
        encrypt(buffer, context: context)
    }

    /// Writes up to this size are held back to gather the iteration's other writes into one record.
    private static let gatheredWriteLimit = 4096

    public func flush(context: TCPFilterContext) {
        if let held = heldPlaintext {
            heldPlaintext = nil
            encrypt(held.reattach(), context: context)
        }
        passPendingOutput(context: context)
    }

    /// Passes the partly filled output buffer down, if there is one.
    private func passPendingOutput(context: TCPFilterContext) {
        guard let pending = pendingOutput else { return }
        pendingOutput = nil
        context.passOutbound(pending.reattach())
    }

    /// Seals `buffer` into records and passes them down.
    private func encrypt(_ buffer: consuming IOBuffer, context: TCPFilterContext) {
        guard ssl != nil, !failed, !sentCloseNotify else { return }
        let plain = buffer.readableBytes
        let (result, _) = buffer.withUnsafeReadableBytes { bytes in
            perform(context, plain: plain) { SSL_write($0, bytes.baseAddress, Int32(clamping: bytes.count)) }
        }
        if result <= 0 { fail(.tlsProtocolError, detail: openSSLError(), mode: .abortive, context: context) }
    }

    public func writeCompleted(_ bytes: Int, context: TCPFilterContext) {
        sentCipherCarry += bytes
        var plain = 0
        while unsentRecordsHead < unsentRecords.count && sentCipherCarry >= unsentRecords[unsentRecordsHead].cipher {
            sentCipherCarry -= unsentRecords[unsentRecordsHead].cipher
            plain += unsentRecords[unsentRecordsHead].plain
            unsentRecordsHead += 1
        }
        if unsentRecordsHead == unsentRecords.count {
            unsentRecords.removeAll(keepingCapacity: true)
            unsentRecordsHead = 0
        }
        context.passWriteCompleted(plain)
    }

    public func closeRequested(_ mode: TCPCloseMode, context: TCPFilterContext) {
        if mode != .abortive { flush(context: context) }  // what was written before the close goes first
        if mode != .abortive, isHandshakeComplete, !sentCloseNotify, !failed {
            sentCloseNotify = true
            _ = perform(context) { SSL_shutdown($0) }  // queues close_notify ahead of the TCP close
        }
        if mode != .abortive { passPendingOutput(context: context) }
        if receivedCloseNotify {
            // The peer ended first (its close_notify came before its TCP end of stream).
            context.close(mode, reason: .peerClosed)
        } else {
            context.passClose(mode)
        }
    }

    public func connectionClosed(_ reason: TCPCloseReason, context: TCPFilterContext) {
        releaseHandshakeSlot()
        if let handshakeTimer { context.connection.thread.cancelTimer(handshakeTimer) }
        handshakeTimer = nil
        for buffer in pendingWrites { buffer.release() }
        pendingWrites.removeAll()
        heldPlaintext?.release()
        heldPlaintext = nil
        pendingOutput?.release()
        pendingOutput = nil
        if let ssl { SSL_free(ssl) }
        ssl = nil
    }

    // MARK: Running OpenSSL

    /// Runs `operation` on the session with pooled buffers as the output region, until it no longer
    /// waits for room to write. Records are laid back to back: a buffer goes down once full, and a
    /// partly filled one waits for the next operation's records until the connection's flush (or goes
    /// down at once when the connection does not coalesce writes). `plain`: the plaintext bytes the
    /// records carry (for write-completion accounting). - Returns: its result and SSL_get_error's code.
    private func perform(_ context: TCPFilterContext, plain: Int = 0, _ operation: (OpaquePointer) -> Int32) -> (Int32, Int32) {
        guard let ssl else { return (-1, SSL_ERROR_SSL) }
        var produced = 0
        // Plaintext whose records OpenSSL had already passed down (cipher 0) completes with them: the
        // FIFO hands it up right after the entries before it.
        defer {
            if produced > 0 || plain > 0 { unsentRecords.append((produced, plain)) }
            if pendingOutput != nil && !context.requestFlush() { passPendingOutput(context: context) }
        }
        while true {
            var output: IOBuffer
            if let pending = pendingOutput {
                pendingOutput = nil
                output = pending.reattach()
            } else {
                guard let fresh = try? context.bufferPool.acquire() else { return (-1, SSL_ERROR_SSL) }
                output = fresh
            }
            let result = output.withUnsafeMutableWritableBytes { region in
                io.pointee.output = region.baseAddress?.assumingMemoryBound(to: UInt8.self)
                io.pointee.output_capacity = region.count
                io.pointee.output_length = 0
                return operation(ssl)
            }
            let written = io.pointee.output_length
            io.pointee.output = nil
            io.pointee.output_capacity = 0
            io.pointee.output_length = 0
            let error = result > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, result)
            output.moveWriterIndex(forwardBy: written)
            produced += written
            if output.writableBytes == 0 {
                context.passOutbound(output)
            } else if output.readableBytes > 0 {
                pendingOutput = output.detach()
            }
            if error != SSL_ERROR_WANT_WRITE { return (result, error) }
        }
    }

    private func fail(_ code: TCPCloseReason.Code, detail: String, mode: TCPCloseMode, context: TCPFilterContext) {
        guard !failed else { return }
        failed = true
        if mode != .abortive { passPendingOutput(context: context) }  // the alert saying why goes first
        if let handshakeTimer { context.connection.thread.cancelTimer(handshakeTimer) }
        handshakeTimer = nil
        context.close(mode, reason: TCPCloseReason(code, detail: detail))
    }

    /// Why the handshake failed, in words: the certificate check's verdict when that was it.
    private func handshakeFailure(ssl: OpaquePointer, error: Int32) -> String {
        let message = openSSLError()
        let verdict = SSL_get_verify_result(ssl)
        if verdict != X509_V_OK, let text = X509_verify_cert_error_string(verdict) {
            return "certificate verification failed: \(String(cString: text)) (\(message))"
        }
        if error == SSL_ERROR_SYSCALL { return "the peer went away during the handshake" }
        return message
    }
}

/// What a handler may want to know of the peer's certificate.
public struct TLSCertificateSummary: Sendable, Hashable {
    /// The subject's distinguished name, OpenSSL's one-line form (`/CN=client/O=Example`).
    public var subject: String
    /// The issuer's distinguished name.
    public var issuer: String
    /// The DNS names of its subject alternative name extension.
    public var dnsNames: [String]
    /// The SHA-256 fingerprint of the DER certificate, lowercase hex.
    public var sha256Fingerprint: String

    init(_ certificate: OpaquePointer) {
        subject = TLSCertificateSummary.oneLine(X509_get_subject_name(certificate))
        issuer = TLSCertificateSummary.oneLine(X509_get_issuer_name(certificate))
        var names = [CChar](repeating: 0, count: 2048)
        ckeel_x509_dns_names(certificate, &names, names.count)
        dnsNames = String(decoding: names.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            .split(separator: "\n").map(String.init)
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        _ = X509_digest(certificate, EVP_sha256(), &digest, &length)
        let hex = Array("0123456789abcdef".utf8)
        sha256Fingerprint = String(decoding: digest.prefix(Int(length)).flatMap { [hex[Int($0 >> 4)], hex[Int($0 & 15)]] }, as: UTF8.self)
    }

    private static func oneLine(_ name: OpaquePointer?) -> String {
        guard let name else { return "" }
        var buffer = [CChar](repeating: 0, count: 512)
        _ = X509_NAME_oneline(name, &buffer, Int32(buffer.count))
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension TCPConnectionOptions {
    /// Speaks TLS with `context` on every connection these options open: a ``TLSFilter`` goes at the
    /// bottom of the stack, under the filters already configured.
    public mutating func useTLS(_ context: TLSContext) {
        let others = makeFilters
        makeFilters = { setup in [TLSFilter(context: context)] + (others?(setup) ?? []) }
    }
}
