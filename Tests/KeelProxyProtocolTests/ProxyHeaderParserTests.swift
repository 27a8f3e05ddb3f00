@testable import KeelProxyProtocol
import KeelSystem
import Testing

// The PROXY protocol parser in memory: the spec's examples and every form it defines, whole and cut at
// every offset; every malformed form refused with its kind, as early as the bytes allow.

func parse(_ bytes: [UInt8], maximumV2Length: Int = 4096) -> Result<ProxyHeaderParser.Outcome, ProxyProtocolError> {
    bytes.withUnsafeBytes { raw in
        Result { () throws(ProxyProtocolError) in try ProxyHeaderParser.parse(raw, maximumV2Length: maximumV2Length) }
    }
}

func address(_ host: String, _ port: UInt16) -> SocketAddress { try! SocketAddress(host: host, port: port) }

let sslTLV = ProxyTLV(.ssl, ProxyTLSInfo(clientFlags: 0x07, verifyResult: 0, fields: [
    ProxyTLV(type: 0x21, value: Array("TLSv1.3".utf8)), ProxyTLV(type: 0x22, value: Array("client.example".utf8)),
    ProxyTLV(type: 0x23, value: Array("TLS_AES_128_GCM_SHA256".utf8)),
]).value)

/// Valid headers of every kind, each with the header the parser must return.
let validHeaders: [(String, [UInt8], ProxyHeader)] = [
    ("v1 TCP4, the spec's example", Array("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".utf8),
     ProxyHeader(version: .v1, addresses: .inet(source: address("192.168.0.1", 56324), destination: address("192.168.0.11", 443)))),
    ("v1 TCP6", Array("PROXY TCP6 2001:db8::1 ::1 65535 0\r\n".utf8),
     ProxyHeader(version: .v1, addresses: .inet(source: address("2001:db8::1", 65535), destination: address("::1", 0)))),
    ("v1 TCP6, full groups", Array("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 0:0:0:0:0:0:0:1 1 2\r\n".utf8),
     ProxyHeader(version: .v1, addresses: .inet(source: address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1), destination: address("::1", 2)))),
    ("v1 UNKNOWN", Array("PROXY UNKNOWN\r\n".utf8),
     ProxyHeader(version: .v1, transportProtocol: .unspecified, addresses: .unspecified)),
    ("v1 UNKNOWN with ignored fields", Array("PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n".utf8),
     ProxyHeader(version: .v1, transportProtocol: .unspecified, addresses: .unspecified)),
    ("v2 TCP4", ProxyHeader(addresses: .inet(source: address("10.1.2.3", 40000), destination: address("10.0.0.1", 7007))).encoded(),
     ProxyHeader(addresses: .inet(source: address("10.1.2.3", 40000), destination: address("10.0.0.1", 7007)))),
    ("v2 UDP6", ProxyHeader(transportProtocol: .datagram, addresses: .inet(source: address("2001:db8::7", 53), destination: address("::1", 5353))).encoded(),
     ProxyHeader(transportProtocol: .datagram, addresses: .inet(source: address("2001:db8::7", 53), destination: address("::1", 5353)))),
    ("v2 UNIX stream", ProxyHeader(addresses: .unix(source: Array("/run/client.sock".utf8), destination: [0] + Array("abstract".utf8))).encoded(),
     ProxyHeader(addresses: .unix(source: Array("/run/client.sock".utf8), destination: [0] + Array("abstract".utf8)))),
    ("v2 LOCAL", ProxyHeader(command: .local, transportProtocol: .unspecified, addresses: .unspecified).encoded(),
     ProxyHeader(command: .local, transportProtocol: .unspecified, addresses: .unspecified)),
    ("v2 TCP4 with every kind of TLV and a CRC32C",
     ProxyHeader(addresses: .inet(source: address("10.1.2.3", 40000), destination: address("10.0.0.1", 443)), tlvs: [
        ProxyTLV(.alpn, Array("h2".utf8)), ProxyTLV(.authority, Array("example.com".utf8)), ProxyTLV(.uniqueID, [UInt8](repeating: 7, count: 128)),
        sslTLV, ProxyTLV(.netns, Array("blue".utf8)), ProxyTLV(type: 0xE0, value: [1, 2, 3]),
     ]).encoded(checksum: true),
     ProxyHeader(addresses: .inet(source: address("10.1.2.3", 40000), destination: address("10.0.0.1", 443)), tlvs: [
        ProxyTLV(.alpn, Array("h2".utf8)), ProxyTLV(.authority, Array("example.com".utf8)), ProxyTLV(.uniqueID, [UInt8](repeating: 7, count: 128)),
        sslTLV, ProxyTLV(.netns, Array("blue".utf8)), ProxyTLV(type: 0xE0, value: [1, 2, 3]),
     ])),
]

@Suite("PROXY protocol parser")
struct ProxyHeaderParserTests {
    @Test(arguments: validHeaders)
    func validHeadersParseWholeAndNeedMoreAtEveryShorterCut(name: String, bytes: [UInt8], expected: ProxyHeader) throws {
        let data = bytes + Array("GET / HTTP/1.1\r\n".utf8)
        guard case .success(.complete(var header, let length)) = parse(data) else {
            Issue.record("\(name): \(parse(data))")
            return
        }
        #expect(length == bytes.count, "\(name)")
        // The CRC32C TLV is reported like any other; compare the rest.
        header.tlvs.removeAll { $0.type == ProxyTLV.Kind.crc32c.rawValue }
        #expect(header == expected, "\(name)")
        for cut in 0..<bytes.count {
            #expect(parse(Array(bytes[..<cut])) == .success(.incomplete), "\(name) cut at \(cut)")
        }
    }

    @Test func knownTLVsHaveTheirAccessors() throws {
        guard case .success(.complete(let header, _)) = parse(validHeaders[9].1) else { throw ParseFailed() }
        #expect(header.applicationProtocol == Array("h2".utf8))
        #expect(header.authority == "example.com")
        #expect(header.uniqueID?.count == 128)
        #expect(header.networkNamespace == "blue")
        #expect(header.value(of: ProxyTLV.Kind(rawValue: 0xE0)) == [1, 2, 3], "an unknown type is kept raw")
        let tls = try #require(header.tls)
        #expect(tls.clientUsedTLS && tls.clientCertificateVerified)
        #expect(tls.version == "TLSv1.3" && tls.commonName == "client.example" && tls.cipher == "TLS_AES_128_GCM_SHA256")
        #expect(header.sourceAddress == address("10.1.2.3", 40000) && header.destinationAddress == address("10.0.0.1", 443))
    }

    struct ParseFailed: Error {}

    @Test func crc32cMatchesTheStandardCheckValue() {
        #expect(Array("123456789".utf8).withUnsafeBytes { CRC32C.checksum($0) } == 0xE306_9283)
    }

    static let v2TCP4 = ProxyHeader(addresses: .inet(source: address("10.1.2.3", 40000), destination: address("10.0.0.1", 7007))).encoded()

    /// `v2TCP4` with byte `index` set to `value`.
    static func v2TCP4(setting index: Int, to value: UInt8) -> [UInt8] {
        var bytes = v2TCP4
        bytes[index] = value
        return bytes
    }

    /// A v2 TCP4 header whose length field says `length` and whose body is `body`.
    static func v2(length: Int, body: [UInt8]) -> [UInt8] {
        ProxyHeaderParser.v2Signature + [0x21, 0x11, UInt8(length >> 8), UInt8(length & 0xFF)] + body
    }

    static let addressBlock: [UInt8] = [10, 1, 2, 3, 10, 0, 0, 1, 0x9C, 0x40, 0x1B, 0x5F]

    static let malformed: [(String, [UInt8], ProxyProtocolError.Kind)] = [
        ("an HTTP request", Array("GET / HTTP/1.1\r\n\r\n".utf8), .notProxyProtocol),
        ("PROXY misspelled", Array("PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8), .notProxyProtocol),
        ("a v2 signature with a wrong byte", v2TCP4(setting: 11, to: 0x0B), .notProxyProtocol),
        ("v2 with version 1", v2TCP4(setting: 12, to: 0x11), .unsupportedVersionOrCommand),
        ("v2 with command 2", v2TCP4(setting: 12, to: 0x22), .unsupportedVersionOrCommand),
        ("v2 with family 4", v2TCP4(setting: 13, to: 0x41), .unsupportedAddressFamily),
        ("v2 with transport 3", v2TCP4(setting: 13, to: 0x13), .unsupportedAddressFamily),
        ("v2 length too short for IPv4 addresses", v2(length: 4, body: [1, 2, 3, 4]), .badLength),
        ("v2 length longer than its TLVs", v2(length: 12 + 5, body: addressBlock + [0x04, 0x00, 0x01, 0x00, 0x00]), .badLength),
        ("v2 TLV running past the length", v2(length: 12 + 4, body: addressBlock + [0x04, 0x00, 0x05, 0x00]), .badLength),
        ("v2 over the size cap", v2(length: 5000, body: addressBlock), .tooLarge),
        ("v2 unique ID over 128 bytes", v2(length: 12 + 3 + 129, body: addressBlock + [0x05, 0x00, 129] + [UInt8](repeating: 1, count: 129)), .badTLV),
        ("v2 SSL TLV too short", v2(length: 12 + 3 + 2, body: addressBlock + [0x20, 0x00, 0x02, 0x01, 0x00]), .badTLV),
        ("v2 with a wrong CRC32C", {
            var bytes = ProxyHeader(addresses: .inet(source: address("10.1.2.3", 1), destination: address("10.0.0.1", 2))).encoded(checksum: true)
            bytes[17] ^= 0x01
            return bytes
        }(), .checksumMismatch),
        ("v1 without CRLF in 107 bytes", Array(("PROXY UNKNOWN " + String(repeating: "f", count: 100)).utf8), .tooLarge),
        ("v1 ending in a bare LF", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".utf8), .malformedLine),
        ("v1 with a bare CR", Array("PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n".utf8), .malformedLine),
        ("v1 with a control byte", Array("PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n".utf8), .malformedLine),
        ("v1 with protocol TCP5", Array("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".utf8), .malformedLine),
        ("v1 with two spaces", Array("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n".utf8), .malformedLine),
        ("v1 with a missing port", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".utf8), .malformedLine),
        ("v1 with a field too many", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".utf8), .malformedLine),
        ("v1 with a trailing space", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n".utf8), .malformedLine),
        ("v1 with an empty line", Array("PROXY \r\n".utf8), .malformedLine),
        ("v1 IPv4 with a leading zero", Array("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n".utf8), .badAddress),
        ("v1 IPv4 octet over 255", Array("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n".utf8), .badAddress),
        ("v1 IPv4 with three octets", Array("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n".utf8), .badAddress),
        ("v1 TCP4 with an IPv6 address", Array("PROXY TCP4 ::1 5.6.7.8 1 2\r\n".utf8), .badAddress),
        ("v1 TCP6 with an IPv4 address", Array("PROXY TCP6 1.2.3.4 ::1 1 2\r\n".utf8), .badAddress),
        ("v1 TCP6 with two ::", Array("PROXY TCP6 1::2::3 ::1 1 2\r\n".utf8), .badAddress),
        ("v1 port with a leading zero", Array("PROXY TCP4 1.2.3.4 5.6.7.8 0443 2\r\n".utf8), .badAddress),
        ("v1 port over 65535", Array("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".utf8), .badAddress),
        ("v1 port with a sign", Array("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n".utf8), .badAddress),
    ]

    @Test(arguments: malformed)
    func malformedHeadersAreRefusedWithTheirKind(name: String, bytes: [UInt8], kind: ProxyProtocolError.Kind) {
        guard case .failure(let error) = parse(bytes + Array("data".utf8), maximumV2Length: 4096) else {
            Issue.record("\(name) was not refused: \(parse(bytes))")
            return
        }
        #expect(error.kind == kind, "\(name): \(error)")
    }

    @Test func aWrongSignatureIsRefusedAtItsFirstWrongByte() {
        #expect(parse(Array("G".utf8)) == .failure(ProxyProtocolError(.notProxyProtocol, "the connection does not start with a PROXY header (first byte 71)")))
        #expect((try? parse(Array("PRX".utf8)).get()) == nil)
        #expect((try? parse([0x0D, 0x0A, 0x0D, 0x0A, 0x01]).get()) == nil)
        // A v2 length too short for its addresses is refused once the 16 fixed bytes are in.
        #expect((try? parse(Array(Self.v2(length: 4, body: []))).get()) == nil)
    }

    @Test func trustedRangesMatchTheirPrefixes() throws {
        let loopback = try ProxyAddressRange("127.0.0.0/8")
        #expect(loopback.contains(address("127.9.9.9", 1)))
        #expect(!loopback.contains(address("128.0.0.1", 1)))
        #expect(loopback.contains(address("::ffff:127.0.0.5", 1)), "an IPv4-mapped address")
        let documentation = try ProxyAddressRange("2001:db8::/33")
        #expect(documentation.contains(address("2001:db8:7fff::1", 1)))
        #expect(!documentation.contains(address("2001:db8:8000::1", 1)))
        #expect(try ProxyAddressRange("10.1.2.3").contains(address("10.1.2.3", 9)))
        #expect(!(try ProxyAddressRange("10.1.2.3")).contains(address("10.1.2.4", 9)))
        #expect(try ProxyAddressRange("0.0.0.0/0").contains(address("203.0.113.9", 9)))
        #expect(try ProxyAddressRange("10.1.2.3/8").description == "10.0.0.0/8")
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.0/x", "::/129"] {
            #expect(throws: ProxyRangeError.self, "\(bad)") { try ProxyAddressRange(bad) }
        }
    }
}
