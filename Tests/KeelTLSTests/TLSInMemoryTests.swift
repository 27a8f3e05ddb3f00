import KeelBuffers
import KeelEngine
import KeelSockets
import KeelTLS
import KeelTestSupport
import Testing

// TLS in memory: a server and a client connection, each with its TLS filter on an embedded thread,
// their bytes pumped into each other split at chosen points. No sockets, no threads, no sleeps.

/// Logs what a TLS connection's handler sees; optionally writes `greeting` once established, echoes.
struct TLSRecorder: TCPConnectionHandler {
    let log: Collector<String>
    var greeting: String?
    var echoes = false

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let tls = connection.filter(ofType: TLSFilter.self)
        log.add("established \(tls?.version.map { "\($0)" } ?? "-") alpn=\(tls?.applicationProtocol ?? "-")")
        if let subject = tls?.peerCertificate?.subject { log.add("peer \(subject)") }
        if tls?.isResumed == true { log.add("resumed") }
        if let greeting {
            let bytes = Array(greeting.utf8)
            var offset = 0
            while offset < bytes.count {
                var buffer = try! connection.thread.bufferPool.acquire()
                let count = min(buffer.writableBytes, bytes.count - offset)
                buffer.append(contentsOf: bytes[offset..<(offset + count)])
                connection.write(buffer)
                offset += count
            }
        }
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        log.add("in \(String(decoding: buffer.readableByteArray, as: UTF8.self))")
        if echoes { connection.write(buffer) }
    }

    mutating func connectionPeerHalfClosed(_ connection: TCPConnection) {
        log.add("half-closed")
        connection.close()
    }

    mutating func connectionClosed(_ connection: TCPConnection, reason: TCPCloseReason) {
        log.add("closed \(reason.code)")
        if let detail = reason.detail { log.add("detail \(detail)") }
    }
}

/// A client and a server joined in memory.
final class TLSPair {
    let serverLog = Collector<String>()
    let clientLog = Collector<String>()
    let server: EmbeddedConnection<TLSRecorder>
    let client: EmbeddedConnection<TLSRecorder>
    private var clientFinForwarded = false
    private var serverFinForwarded = false

    init(server serverContext: TLSContext, client clientContext: TLSContext, greeting: String? = "hello",
         coalescesWrites: Bool = true) {
        var serverOptions = TCPConnectionOptions()
        serverOptions.useTLS(serverContext)
        serverOptions.coalescesWrites = coalescesWrites
        var clientOptions = TCPConnectionOptions()
        clientOptions.useTLS(clientContext)
        clientOptions.coalescesWrites = coalescesWrites
        server = EmbeddedConnection(handler: TLSRecorder(log: serverLog, echoes: true), options: serverOptions)
        client = EmbeddedConnection(handler: TLSRecorder(log: clientLog, greeting: greeting), options: clientOptions)
    }

    /// Moves bytes both ways, each transfer cut into pieces of `split` bytes, and ends of stream, until
    /// nothing moves.
    func pump(split: Int = .max) {
        for _ in 0..<10_000 {
            let toServer = client.takeWritten()
            if !toServer.isEmpty && !server.isClosed { server.receive(chunks: toServer.pieces(of: split)) }
            let toClient = server.takeWritten()
            if !toClient.isEmpty && !client.isClosed { client.receive(chunks: toClient.pieces(of: split)) }
            var moved = !toServer.isEmpty || !toClient.isEmpty
            if client.peerSawEndOfStream && !clientFinForwarded && !server.isClosed {
                clientFinForwarded = true
                server.peerHalfCloses()
                moved = true
            }
            if server.peerSawEndOfStream && !serverFinForwarded && !client.isClosed {
                serverFinForwarded = true
                client.peerHalfCloses()
                moved = true
            }
            if !moved { return }
        }
        Issue.record("the pair never went quiet")
    }

    /// Both sides returned every buffer and descriptor.
    var finishesClean: Bool {
        let serverClean = server.finish().isClean
        let clientClean = client.finish().isClean
        return serverClean && clientClean
    }
}

extension Array where Element == UInt8 {
    /// The TLS records these bytes hold, as (content type, length); the last may be incomplete.
    var tlsRecords: [(type: UInt8, length: Int)] {
        var records: [(UInt8, Int)] = []
        var offset = 0
        while offset + 5 <= count {
            let length = Int(self[offset + 3]) << 8 | Int(self[offset + 4])
            records.append((self[offset], length))
            offset += 5 + length
        }
        return records
    }

    func pieces(of size: Int) -> [[UInt8]] {
        guard size < count else { return [self] }
        return stride(from: 0, to: count, by: size).map { Array(self[$0..<Swift.min($0 + size, count)]) }
    }
}

@Suite("TLS in memory")
struct TLSInMemoryTests {
    let pki = TestPKI.shared

    @Test(arguments: [TLSProfile.intermediate, .modern], [1, 5, 100, Int.max])
    func handshakeThenEchoWithEverySplit(profile: TLSProfile, split: Int) throws {
        let pair = TLSPair(
            server: try pki.serverContext { $0.profile = profile; $0.applicationProtocols = ["h2", "http/1.1"] },
            client: try pki.clientContext { $0.profile = profile; $0.applicationProtocols = ["http/1.1"] })
        pair.pump(split: split)
        let version = profile == .modern ? "TLSv1.3" : "TLSv1.3"  // both allow 1.3, the highest wins
        #expect(pair.clientLog.snapshot.prefix(2) == ["established \(version) alpn=http/1.1", "peer /CN=localhost"])
        #expect(pair.serverLog.snapshot == ["established \(version) alpn=http/1.1", "in hello"])
        #expect(pair.clientLog.snapshot.last == "in hello")
        // A graceful close sends close_notify; the server sees a clean end and closes in turn.
        pair.client.withConnection { $0.close() }
        pair.pump(split: split)
        #expect(pair.serverLog.snapshot.suffix(2) == ["half-closed", "closed peerClosed"])
        #expect(pair.clientLog.snapshot.last == "closed local")
        #expect(pair.finishesClean)
    }

    @Test func tls12IsNegotiatedWhenTheClientAllowsNothingHigher() throws {
        var tls12Only = TLSProfile.intermediate
        tls12Only.maximumVersion = .tls12
        let pair = TLSPair(server: try pki.serverContext(), client: try pki.clientContext { $0.profile = tls12Only })
        pair.pump(split: 3)
        #expect(pair.serverLog.snapshot == ["established TLSv1.2 alpn=-", "in hello"])
        #expect(pair.finishesClean)
    }

    @Test func aLargeWriteArrivesWholeAcrossRecords() throws {
        let big = String(repeating: "0123456789abcdef", count: 10_000)  // 160 KB: many records and buffers
        let pair = TLSPair(server: try pki.serverContext(), client: try pki.clientContext(), greeting: big)
        pair.pump(split: 1000)
        let echoed = pair.clientLog.snapshot.filter { $0.hasPrefix("in ") }.map { $0.dropFirst(3) }.joined()
        #expect(echoed.utf8.count == big.utf8.count)
        #expect(echoed == big, "the echo differs")
        #expect(pair.finishesClean)
    }

    @Test func aServerTheClientDoesNotTrustFailsTheHandshake() throws {
        let pair = TLSPair(
            server: try pki.serverContext { $0.certificateChain = pki.otherCertificate; $0.privateKey = pki.otherKey },
            client: try pki.clientContext())
        pair.pump()
        #expect(pair.clientLog.snapshot.first == "closed tls.handshakeFailed")
        #expect(pair.clientLog.snapshot.contains { $0.hasPrefix("detail certificate verification failed") })
        #expect(!pair.serverLog.snapshot.contains { $0.hasPrefix("established") })
        #expect(pair.finishesClean)
    }

    @Test func aCertificateForAnotherNameFailsTheHandshake() throws {
        let pair = TLSPair(server: try pki.serverContext(), client: try pki.clientContext { $0.serverName = "example.org" })
        pair.pump()
        #expect(pair.clientLog.snapshot.first == "closed tls.handshakeFailed")
        #expect(pair.clientLog.snapshot.contains { $0.contains("hostname mismatch") })
        #expect(pair.finishesClean)
    }

    @Test func mutualTLSRefusesAClientWithoutACertificate() throws {
        let pair = TLSPair(server: try pki.serverContext { $0.peerVerification = .required(.file(pki.caCertificate)) },
                           client: try pki.clientContext())
        pair.pump()
        #expect(pair.serverLog.snapshot.first == "closed tls.handshakeFailed")
        #expect(!pair.serverLog.snapshot.contains { $0.hasPrefix("in ") })
        #expect(pair.finishesClean)
    }

    @Test func mutualTLSShowsTheHandlerTheClientCertificate() throws {
        let pair = TLSPair(
            server: try pki.serverContext { $0.peerVerification = .required(.file(pki.caCertificate)) },
            client: try pki.clientContext { $0.certificateChain = pki.clientCertificate; $0.privateKey = pki.clientKey })
        pair.pump(split: 7)
        #expect(pair.serverLog.snapshot.prefix(3) == ["established TLSv1.3 alpn=-", "peer /CN=test-client/O=Keel", "in hello"])
        let summary = pair.server.withConnection { $0.filter(ofType: TLSFilter.self)?.peerCertificate }
        #expect(summary?.dnsNames == ["client.keel.test"])
        #expect(summary?.sha256Fingerprint.count == 64)
        #expect(pair.finishesClean)
    }

    @Test func noCommonApplicationProtocolFailsTheHandshake() throws {
        let pair = TLSPair(server: try pki.serverContext { $0.applicationProtocols = ["h2"] },
                           client: try pki.clientContext { $0.applicationProtocols = ["imap"] })
        pair.pump()
        #expect(pair.serverLog.snapshot.first == "closed tls.handshakeFailed")
        #expect(pair.clientLog.snapshot.first == "closed tls.handshakeFailed")
        #expect(pair.finishesClean)
    }

    @Test func garbageInsteadOfAClientHelloClosesWithATypedReason() throws {
        let log = Collector<String>()
        var options = TCPConnectionOptions()
        options.useTLS(try pki.serverContext())
        let server = EmbeddedConnection(handler: TLSRecorder(log: log), options: options)
        server.receive("GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        #expect(log.snapshot.first == "closed tls.handshakeFailed")
        #expect(server.finish().isClean)
    }

    @Test func aTCPEndWithoutCloseNotifyIsReportedAsTruncation() throws {
        let pair = TLSPair(server: try pki.serverContext(), client: try pki.clientContext())
        pair.pump()
        pair.server.peerHalfCloses()  // the client's FIN, with no close_notify before it
        #expect(pair.serverLog.snapshot.contains("closed tls.truncated"))
        #expect(!pair.serverLog.snapshot.contains("half-closed"), "not a clean end")
        #expect(pair.finishesClean)
    }

    @Test(arguments: [true, false])
    func smallWritesOfOneIterationBecomeOneRecord(coalescesWrites: Bool) throws {
        let pair = TLSPair(server: try pki.serverContext(), client: try pki.clientContext(), greeting: nil,
                           coalescesWrites: coalescesWrites)
        pair.pump()
        pair.client.withConnection { connection in
            for word in ["one ", "two ", "three"] {
                var buffer = try! connection.thread.bufferPool.acquire()
                buffer.append(contentsOf: Array(word.utf8))
                connection.write(buffer)
            }
        }
        let sent = pair.client.takeWritten()
        #expect(sent.tlsRecords.count == (coalescesWrites ? 1 : 3), "records: \(sent.tlsRecords)")
        // The server decrypts consecutive records into one delivery either way.
        pair.server.receive(sent)
        #expect(pair.serverLog.snapshot.last == "in one two three")
        pair.pump()
        #expect(pair.clientLog.snapshot.last == "in one two three")
        #expect(pair.finishesClean)
    }

    /// A pair past its handshake, and the client's next write as ciphertext (not yet delivered).
    private func establishedPairAndARecord() throws -> (TLSPair, [UInt8]) {
        let pair = TLSPair(server: try pki.serverContext(), client: try pki.clientContext(), greeting: nil)
        pair.pump()
        pair.client.withConnection { connection in
            var buffer = try! connection.thread.bufferPool.acquire()
            buffer.append(contentsOf: Array(repeating: UInt8(ascii: "x"), count: 300))
            connection.write(buffer)
        }
        let record = pair.client.takeWritten()
        #expect(record.tlsRecords.count == 1)
        return (pair, record)
    }

    @Test func aRecordCutShortByTheEndOfStreamIsTruncation() throws {
        let (pair, record) = try establishedPairAndARecord()
        pair.server.receive(chunks: [Array(record.prefix(100))], thenHalfCloses: true)
        #expect(pair.serverLog.snapshot.suffix(2) == ["closed tls.truncated", "detail TCP end of stream without a TLS close_notify"])
        #expect(!pair.serverLog.snapshot.contains { $0.hasPrefix("in ") }, "no part of a record that did not authenticate")
        #expect(pair.finishesClean)
    }

    @Test func aResetMidRecordClosesWithTheReset() throws {
        let (pair, record) = try establishedPairAndARecord()
        pair.server.receive(Array(record.prefix(100)))
        pair.server.peerResets()
        #expect(pair.server.isClosed)
        #expect(pair.serverLog.snapshot.last?.hasPrefix("closed ") == true)
        #expect(!pair.serverLog.snapshot.contains { $0.hasPrefix("in ") })
        #expect(pair.finishesClean)
    }

    @Test(arguments: [
        ("oversized", [UInt8(23), 3, 3, 0x48, 0x01] + [UInt8](repeating: 0, count: 64)),  // 18,433 bytes: over any limit
        ("corrupted", []),  // the real record with one ciphertext byte flipped
        ("unknown type", [UInt8(99), 3, 3, 0, 16] + [UInt8](repeating: 0, count: 16)),
    ])
    func aBadRecordAfterTheHandshakeClosesWithAProtocolError(name: String, bytes: [UInt8]) throws {
        var (pair, record) = try establishedPairAndARecord()
        if bytes.isEmpty { record[record.count / 2] ^= 0x01 }
        pair.server.receive(bytes.isEmpty ? record : bytes)
        #expect(pair.serverLog.snapshot.last == "closed tls.protocolError" ||
                pair.serverLog.snapshot.suffix(2).first == "closed tls.protocolError", "\(name): \(pair.serverLog.snapshot)")
        #expect(!pair.serverLog.snapshot.contains { $0.hasPrefix("in ") }, "\(name)")
        // The server told the client why (a fatal alert) before closing.
        pair.pump()
        #expect(pair.clientLog.snapshot.contains { $0.hasPrefix("closed ") }, "\(name)")
        #expect(pair.finishesClean, "\(name)")
    }

    @Test func aPeerThatStallsMidHandshakeTimesOut() throws {
        let log = Collector<String>()
        var options = TCPConnectionOptions()
        options.useTLS(try pki.serverContext { $0.handshakeTimeout = .seconds(10) })
        let server = EmbeddedConnection(handler: TLSRecorder(log: log), options: options)
        server.receive([0x16, 0x03, 0x01, 0x00, 0x40])  // the start of a ClientHello record, then nothing
        server.advanceTime(by: .seconds(9))
        #expect(!server.isClosed)
        server.advanceTime(by: .seconds(2))
        #expect(log.snapshot.first == "closed tls.handshakeTimeout")
        #expect(server.finish().isClean)
    }

    @Test func handshakesOverTheCapAreRefusedAndSlotsComeBack() throws {
        let serverContext = try pki.serverContext { $0.maximumConcurrentHandshakes = 1 }
        let first = TLSPair(server: serverContext, client: try pki.clientContext())
        #expect(serverContext.handshakesNow == 1, "the first server connection is mid-handshake")
        let log = Collector<String>()
        var options = TCPConnectionOptions()
        options.useTLS(serverContext)
        let refused = EmbeddedConnection(handler: TLSRecorder(log: log), options: options)
        #expect(log.snapshot == ["closed tls.handshakeLimit", "detail 1 handshakes in progress"])
        #expect(refused.finish().isClean)
        first.pump()
        #expect(first.serverLog.snapshot.first?.hasPrefix("established") == true)
        #expect(serverContext.handshakesNow == 0, "a finished handshake gives its slot back")
        let second = TLSPair(server: serverContext, client: try pki.clientContext())
        second.pump()
        #expect(second.serverLog.snapshot.first?.hasPrefix("established") == true)
        #expect(first.finishesClean && second.finishesClean)
        #expect(serverContext.handshakesNow == 0)
    }

    @Test(arguments: [("alt.keel.test", "/CN=alt.keel.test"), ("ALT.keel.test", "/CN=alt.keel.test"),
                      ("x.wild.keel.test", "/CN=alt.keel.test"), ("localhost", "/CN=localhost")])
    func theServerNameChoosesTheCertificate(name: String, subject: String) throws {
        let server = try pki.serverContext {
            $0.additionalCertificates = [TLSServerCertificate(
                serverNames: ["alt.keel.test", "*.wild.keel.test"], certificateChain: pki.path("alt.pem"), privateKey: pki.path("alt.key"))]
        }
        let pair = TLSPair(server: server, client: try pki.clientContext { $0.serverName = name })
        pair.pump(split: 50)
        #expect(pair.clientLog.snapshot.prefix(2) == ["established TLSv1.3 alpn=-", "peer \(subject)"])
        #expect(pair.finishesClean)
    }

    @Test func anUnknownServerNameGetsTheDefaultCertificate() throws {
        let server = try pki.serverContext {
            $0.additionalCertificates = [TLSServerCertificate(
                serverNames: ["alt.keel.test"], certificateChain: pki.path("alt.pem"), privateKey: pki.path("alt.key"))]
        }
        let pair = TLSPair(server: server, client: try pki.clientContext { $0.serverName = "deep.x.wild.keel.test" })
        pair.pump()
        #expect(pair.clientLog.snapshot.first == "closed tls.handshakeFailed", "the default certificate is for localhost")
        #expect(pair.finishesClean)
    }

    @Test(arguments: [TLSVersion.tls12, .tls13])
    func aClientResumesItsSessionUntilTheTicketKeyIsTwoRotationsOld(version: TLSVersion) throws {
        var profile = TLSProfile.intermediate
        profile.maximumVersion = version
        let server = try pki.serverContext()
        let client = try pki.clientContext { $0.profile = profile }
        func connect() -> Bool {
            let pair = TLSPair(server: server, client: client)
            pair.pump(split: 64)
            let resumed = pair.serverLog.snapshot.contains("resumed")
            #expect(resumed == pair.clientLog.snapshot.contains("resumed"), "both sides agree")
            #expect(pair.serverLog.snapshot.contains("in hello"))
            // A session stays resumable only when its connection ended with close_notify.
            pair.client.withConnection { $0.close() }
            pair.pump()
            #expect(pair.finishesClean)
            return resumed
        }
        #expect(!connect(), "the first connection has nothing to resume")
        #expect(connect(), "the second resumes the first one's session")
        server.rotateSessionTicketKeys()
        #expect(connect(), "a ticket sealed with the previous key is still accepted")
        server.rotateSessionTicketKeys()
        server.rotateSessionTicketKeys()
        #expect(!connect(), "a ticket two keys old gets a full handshake")
        #expect(connect())
    }

    @Test func aConfigurationThatCannotWorkIsRefusedNamingTheFile() throws {
        #expect(throws: TLSConfigurationError.self) { try TLSContext(configuration: TLSConfiguration(role: .server)) }
        do throws(TLSConfigurationError) {
            _ = try pki.serverContext { $0.certificateChain = "/nonexistent/cert.pem" }
            Issue.record("a missing certificate was accepted")
        } catch {
            #expect(error.code == .unreadableCertificate && error.path == "/nonexistent/cert.pem")
        }
        do throws(TLSConfigurationError) {
            _ = try pki.serverContext { $0.privateKey = pki.otherKey }
            Issue.record("a key of another certificate was accepted")
        } catch {
            #expect(error.code == .keyMismatch)
            #expect(error.description.contains("Fix:"))
        }
    }
}
