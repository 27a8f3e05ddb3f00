import KeelBuffers
import KeelEngine
import KeelProxyProtocol
import KeelSockets
import KeelSystem
import KeelTestSupport
import Testing

// The PROXY protocol filter on a real connection in memory: what the handler sees (addresses, data,
// the header), and every way a connection is refused before the handler hears of it.

/// Logs what the handler sees: its opening with the addresses, then every byte.
struct AddressRecorder: TCPConnectionHandler {
    let log: Collector<String>

    mutating func connectionEstablished(_ connection: TCPConnection) {
        let header = connection.filter(ofType: ProxyProtocolFilter.self)?.header
        log.add("open \(connection.remoteAddress.map { "\($0)" } ?? "-") -> \(connection.localAddress.map { "\($0)" } ?? "-")"
            + (header.map { " v\($0.version.rawValue)" } ?? ""))
    }

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        log.add("data \(String(decoding: buffer.readableByteArray, as: UTF8.self))")
    }
}

func proxyConnection(_ configuration: ProxyProtocolConfiguration = ProxyProtocolConfiguration(),
                     remote: String = "127.0.0.1") -> (EmbeddedConnection<AddressRecorder>, Collector<String>) {
    var options = TCPConnectionOptions()
    options.acceptProxyProtocol(configuration)
    let log = Collector<String>()
    let connection = EmbeddedConnection(handler: AddressRecorder(log: log), options: options,
                                        remoteAddress: try! SocketAddress(host: remote, port: 50_000))
    return (connection, log)
}

@Suite("PROXY protocol filter in memory")
struct ProxyProtocolFilterTests {
    static let v1 = Array("PROXY TCP4 203.0.113.7 192.0.2.1 41000 443\r\n".utf8)
    static let v2 = ProxyHeader(addresses: .inet(source: address("2001:db8::7", 41000), destination: address("2001:db8::1", 443)),
                                tlvs: [ProxyTLV(.authority, Array("example.com".utf8))]).encoded(checksum: true)

    @Test func theHandlerSeesTheClientsAddressesAndOnlyTheData() {
        for (header, expected) in [(Self.v1, "open 203.0.113.7:41000 -> 192.0.2.1:443 v1"),
                                   (Self.v2, "open [2001:db8::7]:41000 -> [2001:db8::1]:443 v2")] {
            let (connection, log) = proxyConnection()
            #expect(log.snapshot.isEmpty, "the opening waits for the header")
            connection.receive(header + Array("hello".utf8))
            #expect(log.snapshot == [expected, "data hello"])
            #expect(connection.filters.isEmpty, "the filter left the stack")
            #expect(connection.finish().isClean)
        }
    }

    @Test func aHeaderSplitAtEveryOffsetOrByteByByteGivesTheSame() {
        let data = Self.v2 + Array("hello".utf8)
        for cut in 1..<data.count {
            let (connection, log) = proxyConnection()
            connection.receive(chunks: [Array(data[..<cut]), Array(data[cut...])])
            #expect(log.snapshot.first == "open [2001:db8::7]:41000 -> [2001:db8::1]:443 v2", "cut at \(cut)")
            #expect(log.snapshot.dropFirst().map { $0.dropFirst(5) }.joined() == "hello", "cut at \(cut): \(log.snapshot)")
            #expect(connection.finish().isClean)
        }
        let (connection, log) = proxyConnection()
        connection.receive(chunks: data.map { [$0] })
        #expect(log.snapshot.first == "open [2001:db8::7]:41000 -> [2001:db8::1]:443 v2")
        #expect(log.snapshot.dropFirst().map { $0.dropFirst(5) }.joined() == "hello")
        #expect(connection.finish().isClean)
    }

    @Test func localAndUnknownHeadersKeepTheRealAddresses() {
        for header in [Array("PROXY UNKNOWN\r\n".utf8), ProxyHeader(command: .local, transportProtocol: .unspecified, addresses: .unspecified).encoded()] {
            let (connection, log) = proxyConnection()
            connection.receive(header + Array("x".utf8))
            #expect(log.snapshot.first?.hasPrefix("open 127.0.0.1:50000 -> 127.0.0.1:7007") == true, "\(log.snapshot)")
            #expect(connection.finish().isClean)
        }
    }

    @Test(arguments: [
        ("no header", Array("GET / HTTP/1.1\r\n\r\n".utf8), false),
        ("a malformed header", Array("PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n".utf8), false),
        ("a truncated header, then FIN", Array(ProxyProtocolFilterTests.v2.prefix(20)), true),
    ])
    func aConnectionWithoutAValidHeaderIsClosedBeforeTheHandlerHearsOfIt(name: String, bytes: [UInt8], halfCloses: Bool) {
        let (connection, log) = proxyConnection()
        connection.receive(chunks: [bytes], thenHalfCloses: halfCloses)
        #expect(connection.closeReason?.code == .proxyProtocolError, "\(name): \(String(describing: connection.closeReason))")
        #expect(log.snapshot.isEmpty, "\(name)")
        #expect(connection.finish().isClean, "\(name)")
    }

    @Test func aHeaderThatNeverCompletesTimesOut() {
        let (connection, log) = proxyConnection(ProxyProtocolConfiguration(headerTimeout: .seconds(3)))
        connection.receive(Array(Self.v1.prefix(10)))
        connection.advanceTime(by: .seconds(2))
        #expect(!connection.isClosed)
        connection.advanceTime(by: .seconds(2))
        #expect(connection.closeReason?.code == .proxyHeaderTimeout)
        #expect(log.snapshot.isEmpty)
        #expect(connection.finish().isClean)
    }

    @Test func trustedModeWantsAHeaderFromProxiesAndNoneFromAnyoneElse() throws {
        let configuration = ProxyProtocolConfiguration(mode: .trusted([try ProxyAddressRange("10.0.0.0/8")]))
        // From a trusted proxy: a header is read.
        let (proxied, proxiedLog) = proxyConnection(configuration, remote: "10.9.9.9")
        proxied.receive(Self.v1 + Array("hi".utf8))
        #expect(proxiedLog.snapshot == ["open 203.0.113.7:41000 -> 192.0.2.1:443 v1", "data hi"])
        #expect(proxied.finish().isClean)
        // From a trusted proxy without a header: refused.
        let (bare, bareLog) = proxyConnection(configuration, remote: "10.9.9.9")
        bare.receive("hi there")
        #expect(bare.closeReason?.code == .proxyProtocolError)
        #expect(bareLog.snapshot.isEmpty)
        #expect(bare.finish().isClean)
        // From anyone else: open at once with its own address; a header is refused.
        let (direct, directLog) = proxyConnection(configuration, remote: "192.0.2.50")
        #expect(directLog.snapshot == ["open 192.0.2.50:50000 -> 127.0.0.1:7007"])
        direct.receive(chunks: [Array("PR".utf8), Array("OBE\r\n".utf8)])
        #expect(directLog.snapshot.dropFirst().map { $0.dropFirst(5) }.joined() == "PROBE\r\n", "its data, held only while it looked like a header")
        #expect(direct.finish().isClean)
        let (spoofer, _) = proxyConnection(configuration, remote: "192.0.2.50")
        spoofer.receive(Self.v1)
        #expect(spoofer.closeReason?.code == .proxyProtocolError, "an untrusted peer may not name another client")
        #expect(spoofer.finish().isClean)
    }

    @Test func aConnectorSendsItsHeaderFirst() {
        var options = TCPConnectionOptions()
        let header = ProxyHeader(addresses: .inet(source: address("203.0.113.7", 41000), destination: address("192.0.2.1", 443)))
        options.sendProxyHeader(header, checksum: true)
        let log = Collector<String>()
        let connection = EmbeddedConnection(handler: AddressRecorder(log: log), options: options)
        #expect(log.snapshot == ["open 127.0.0.1:50000 -> 127.0.0.1:7007"])
        connection.withConnection { connection in
            var buffer = try! connection.thread.bufferPool.acquire()
            buffer.append(contentsOf: Array("after".utf8))
            connection.write(buffer)
        }
        let written = connection.takeWritten()
        let encoded = header.encoded(checksum: true)
        #expect(Array(written.prefix(encoded.count)) == encoded)
        #expect(Array(written.dropFirst(encoded.count)) == Array("after".utf8))
        #expect(connection.finish().isClean)
    }
}
