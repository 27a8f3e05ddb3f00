import Glibc
import KeelSystem

/// Reads a PROXY protocol header (v1 or v2, told apart by their first byte) from the start of the
/// bytes received so far. Strict: anything that does not follow the spec exactly is refused with a
/// ``ProxyProtocolError``, and as early as the bytes allow (a wrong signature at its first wrong byte,
/// a v2 length too short for its addresses as soon as the fixed 16 bytes are in).
///
/// Stateless: call it again with everything received so far when it answers ``Outcome/incomplete``
/// (a header is at most a few hundred bytes, and almost always arrives in one segment). An address-only
/// header is read without allocating.
public enum ProxyHeaderParser {
    /// What the bytes so far hold.
    public enum Outcome: Sendable, Hashable {
        /// A valid beginning; more bytes are needed.
        case incomplete
        /// A whole header, `length` bytes long; the connection's data follows it.
        case complete(ProxyHeader, length: Int)
    }

    /// The longest v1 line, CRLF included (`PROXY UNKNOWN` with two full IPv6 addresses and ports).
    public static let maximumV1Length = 107
    /// The 12 bytes every v2 header starts with.
    public static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// `PROXY ` (v1).
    static let v1Prefix: [UInt8] = Array("PROXY ".utf8)
    /// The largest unique ID the spec allows.
    static let maximumUniqueIDLength = 128

    /// Parses the header at the start of `bytes`.
    /// - Parameter maximumV2Length: the cap on a v2 header's total size (its 16 fixed bytes, addresses
    ///   and TLVs); longer ones are refused as ``ProxyProtocolError/Kind/tooLarge``.
    public static func parse(_ bytes: UnsafeRawBufferPointer, maximumV2Length: Int = 4096) throws(ProxyProtocolError) -> Outcome {
        guard let first = bytes.first else { return .incomplete }
        switch first {
        case v1Prefix[0]: return try parseV1(bytes)
        case v2Signature[0]: return try parseV2(bytes, maximumLength: maximumV2Length)
        default: throw ProxyProtocolError(.notProxyProtocol, "the connection does not start with a PROXY header (first byte \(first))")
        }
    }

    // MARK: Version 1

    private static func parseV1(_ bytes: UnsafeRawBufferPointer) throws(ProxyProtocolError) -> Outcome {
        for index in 0..<min(bytes.count, v1Prefix.count) where bytes[index] != v1Prefix[index] {
            throw ProxyProtocolError(.notProxyProtocol, "the connection does not start with a PROXY header")
        }
        var end: Int?
        for index in 0..<min(bytes.count, maximumV1Length) {
            let byte = bytes[index]
            if byte == 0x0A {
                guard index > 0, bytes[index - 1] == 0x0D else { throw ProxyProtocolError(.malformedLine, "a line feed without a carriage return") }
                end = index + 1
                break
            }
            if index > 0 && bytes[index - 1] == 0x0D {
                throw ProxyProtocolError(.malformedLine, "a carriage return not followed by a line feed")
            }
            if byte != 0x0D && (byte < 0x20 || byte > 0x7E) {
                throw ProxyProtocolError(.malformedLine, "a byte that is not printable US-ASCII (\(byte))")
            }
        }
        guard let end else {
            if bytes.count >= maximumV1Length {
                throw ProxyProtocolError(.tooLarge, "no CRLF in the first \(maximumV1Length) bytes")
            }
            return .incomplete
        }
        let line = UnsafeRawBufferPointer(rebasing: bytes[v1Prefix.count..<(end - 2)])
        var fields = V1Fields(line)
        guard let proto = fields.next() else { throw ProxyProtocolError(.malformedLine, "no protocol after PROXY") }
        if equals(proto, "UNKNOWN") {
            // The rest of the line, if any, is to be ignored.
            let header = ProxyHeader(version: .v1, command: .proxy, transportProtocol: .unspecified, addresses: .unspecified)
            return .complete(header, length: end)
        }
        let family: SocketAddress.Family
        if equals(proto, "TCP4") {
            family = .ipv4
        } else if equals(proto, "TCP6") {
            family = .ipv6
        } else {
            throw ProxyProtocolError(.malformedLine, "the protocol is not TCP4, TCP6 or UNKNOWN")
        }
        guard let source = fields.next(), let destination = fields.next(), let sourcePort = fields.next(),
              let destinationPort = fields.next() else {
            throw ProxyProtocolError(.malformedLine, "fewer than four fields after the protocol")
        }
        guard fields.isAtEnd else { throw ProxyProtocolError(.malformedLine, "more than four fields after the protocol") }
        guard fields.wellFormed else { throw ProxyProtocolError(.malformedLine, "fields must be separated by exactly one space") }
        let ports = (try port(sourcePort), try port(destinationPort))
        let addresses = ProxyHeader.Addresses.inet(
            source: try address(source, family: family, port: ports.0), destination: try address(destination, family: family, port: ports.1))
        return .complete(ProxyHeader(version: .v1, command: .proxy, transportProtocol: .stream, addresses: addresses), length: end)
    }

    /// The space-separated fields of a v1 line after `PROXY `.
    private struct V1Fields {
        let line: UnsafeRawBufferPointer
        var offset = 0
        /// False once an empty field (two spaces, or a space at either end) was seen.
        var wellFormed = true

        init(_ line: UnsafeRawBufferPointer) { self.line = line }

        /// The last field ended at the end of the line (a trailing space leaves one more, empty, field).
        var isAtEnd: Bool { offset > line.count }

        mutating func next() -> UnsafeRawBufferPointer? {
            guard offset < line.count || (offset == line.count && offset > 0 && line[offset - 1] == 0x20) else { return nil }
            var end = offset
            while end < line.count && line[end] != 0x20 { end += 1 }
            let field = UnsafeRawBufferPointer(rebasing: line[offset..<end])
            if field.isEmpty { wellFormed = false }
            offset = end + 1
            return field
        }
    }

    private static func equals(_ field: UnsafeRawBufferPointer, _ text: StaticString) -> Bool {
        field.count == text.utf8CodeUnitCount && memcmp(field.baseAddress!, text.utf8Start, field.count) == 0
    }

    /// A decimal port in 0...65535 without leading zeros.
    private static func port(_ field: UnsafeRawBufferPointer) throws(ProxyProtocolError) -> UInt16 {
        guard (1...5).contains(field.count), field.allSatisfy({ (0x30...0x39).contains($0) }),
              field.count == 1 || field[0] != 0x30 else {
            throw ProxyProtocolError(.badAddress, "a port that is not a decimal number without leading zeros")
        }
        let value = field.reduce(0) { $0 * 10 + Int($1 - 0x30) }
        guard value <= 65535 else { throw ProxyProtocolError(.badAddress, "a port over 65535") }
        return UInt16(value)
    }

    private static func address(_ field: UnsafeRawBufferPointer, family: SocketAddress.Family, port: UInt16) throws(ProxyProtocolError) -> SocketAddress {
        switch family {
        case .ipv4:
            guard let address = ipv4(field, port: port) else {
                throw ProxyProtocolError(.badAddress, "not an IPv4 address in canonical form (four decimal numbers, no leading zeros)")
            }
            return address
        case .ipv6:
            guard let address = ipv6(field, port: port) else { throw ProxyProtocolError(.badAddress, "not an IPv6 address in hexadecimal form") }
            return address
        }
    }

    /// Four dot-separated decimal numbers 0...255, without leading zeros.
    private static func ipv4(_ field: UnsafeRawBufferPointer, port: UInt16) -> SocketAddress? {
        var octets: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
        var index = 0
        var value = -1  // -1: no digit yet in this part
        let parsed = withUnsafeMutableBytes(of: &octets) { out -> Bool in
            for byte in field {
                if byte == 0x2E {
                    guard value >= 0, index < 3 else { return false }
                    out[index] = UInt8(value)
                    index += 1
                    value = -1
                    continue
                }
                guard (0x30...0x39).contains(byte), value != 0 else { return false }  // value 0 then a digit: a leading zero
                value = max(value, 0) * 10 + Int(byte - 0x30)
                guard value <= 255 else { return false }
            }
            guard value >= 0, index == 3 else { return false }
            out[3] = UInt8(value)
            return true
        }
        guard parsed else { return nil }
        return withUnsafeBytes(of: octets) { SocketAddress(ipv4: $0, port: port) }
    }

    /// Hexadecimal groups separated by colons (one `::` allowed), as inet_pton reads them; no
    /// embedded dotted IPv4 form.
    private static func ipv6(_ field: UnsafeRawBufferPointer, port: UInt16) -> SocketAddress? {
        guard (2...39).contains(field.count), field.allSatisfy({ isHexDigit($0) || $0 == 0x3A }) else { return nil }
        var text: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)  // 48 bytes, NUL-terminated
        var address: (UInt64, UInt64) = (0, 0)
        let ok = withUnsafeMutableBytes(of: &text) { text -> Bool in
            text.copyMemory(from: field)
            return withUnsafeMutableBytes(of: &address) { out in
                inet_pton(AF_INET6, text.baseAddress!.assumingMemoryBound(to: CChar.self), out.baseAddress) == 1
            }
        }
        guard ok else { return nil }
        return withUnsafeBytes(of: address) { SocketAddress(ipv6: $0, port: port) }
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        (0x30...0x39).contains(byte) || (0x41...0x46).contains(byte) || (0x61...0x66).contains(byte)
    }

    // MARK: Version 2

    private static func parseV2(_ bytes: UnsafeRawBufferPointer, maximumLength: Int) throws(ProxyProtocolError) -> Outcome {
        for index in 0..<min(bytes.count, v2Signature.count) where bytes[index] != v2Signature[index] {
            throw ProxyProtocolError(.notProxyProtocol, "the connection does not start with a PROXY header")
        }
        guard bytes.count >= 16 else { return .incomplete }
        let versionAndCommand = bytes[12]
        guard versionAndCommand >> 4 == 2 else {
            throw ProxyProtocolError(.unsupportedVersionOrCommand, "version \(versionAndCommand >> 4), not 2")
        }
        let command: ProxyHeader.Command
        switch versionAndCommand & 0xF {
        case 0: command = .local
        case 1: command = .proxy
        default: throw ProxyProtocolError(.unsupportedVersionOrCommand, "command \(versionAndCommand & 0xF)")
        }
        let family = Int(bytes[13] >> 4)
        let transport: ProxyHeader.TransportProtocol
        switch bytes[13] & 0xF {
        case 0: transport = .unspecified
        case 1: transport = .stream
        case 2: transport = .datagram
        default: throw ProxyProtocolError(.unsupportedAddressFamily, "transport protocol \(bytes[13] & 0xF)")
        }
        guard family <= 3 else { throw ProxyProtocolError(.unsupportedAddressFamily, "address family \(family)") }
        let length = Int(bytes[14]) << 8 | Int(bytes[15])
        let total = 16 + length
        guard total <= maximumLength else {
            throw ProxyProtocolError(.tooLarge, "a \(total)-byte header, over the \(maximumLength)-byte cap")
        }
        let addressSize: Int
        switch family {
        case 1: addressSize = 12
        case 2: addressSize = 36
        case 3: addressSize = 216
        default: addressSize = 0
        }
        // A LOCAL header's address block is ignored; a PROXY header's must fit its length.
        let hasAddressBlock = family != 0 && length >= addressSize
        if command == .proxy && family != 0 && !hasAddressBlock {
            throw ProxyProtocolError(.badLength, "a length of \(length) cannot hold the \(addressSize) bytes of its addresses")
        }
        guard bytes.count >= total else { return .incomplete }

        var addresses = ProxyHeader.Addresses.unspecified
        if command == .proxy && hasAddressBlock && transport != .unspecified {
            addresses = v2Addresses(UnsafeRawBufferPointer(rebasing: bytes[16..<(16 + addressSize)]), family: family)
        }
        var tlvs: [ProxyTLV] = []
        if hasAddressBlock {
            tlvs = try v2TLVs(UnsafeRawBufferPointer(rebasing: bytes[0..<total]), from: 16 + addressSize)
        }
        let header = ProxyHeader(version: .v2, command: command, transportProtocol: transport, addresses: addresses, tlvs: tlvs)
        return .complete(header, length: total)
    }

    private static func v2Addresses(_ block: UnsafeRawBufferPointer, family: Int) -> ProxyHeader.Addresses {
        func port(_ offset: Int) -> UInt16 { UInt16(block[offset]) << 8 | UInt16(block[offset + 1]) }
        switch family {
        case 1:
            return .inet(source: SocketAddress(ipv4: UnsafeRawBufferPointer(rebasing: block[0..<4]), port: port(8)),
                         destination: SocketAddress(ipv4: UnsafeRawBufferPointer(rebasing: block[4..<8]), port: port(10)))
        case 2:
            return .inet(source: SocketAddress(ipv6: UnsafeRawBufferPointer(rebasing: block[0..<16]), port: port(32)),
                         destination: SocketAddress(ipv6: UnsafeRawBufferPointer(rebasing: block[16..<32]), port: port(34)))
        default:
            return .unix(source: unixPath(UnsafeRawBufferPointer(rebasing: block[0..<108])),
                         destination: unixPath(UnsafeRawBufferPointer(rebasing: block[108..<216])))
        }
    }

    /// A `sun_path`: up to the first NUL, or for an abstract name (a leading NUL) up to its last non-NUL byte.
    private static func unixPath(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        if bytes.first == 0 {
            let end = (bytes.lastIndex { $0 != 0 } ?? 0) + 1
            return Array(bytes[0..<end])
        }
        return Array(bytes.prefix { $0 != 0 })
    }

    /// The TLVs from `start` to the end of `header`, which they must fill exactly; a CRC32C TLV is
    /// checked against the whole header.
    private static func v2TLVs(_ header: UnsafeRawBufferPointer, from start: Int) throws(ProxyProtocolError) -> [ProxyTLV] {
        var tlvs: [ProxyTLV] = []
        var offset = start
        var checksumAt: Int?
        while offset < header.count {
            guard header.count - offset >= 3 else { throw ProxyProtocolError(.badLength, "a TLV cut short by the header's length") }
            let type = header[offset]
            let length = Int(header[offset + 1]) << 8 | Int(header[offset + 2])
            let valueStart = offset + 3
            guard header.count - valueStart >= length else {
                throw ProxyProtocolError(.badLength, "a TLV of \(length) bytes runs past the header's length")
            }
            let value = UnsafeRawBufferPointer(rebasing: header[valueStart..<(valueStart + length)])
            switch ProxyTLV.Kind(rawValue: type) {
            case .noop:
                break
            case .crc32c:
                guard length == 4, checksumAt == nil else { throw ProxyProtocolError(.badTLV, "a CRC32C TLV must be 4 bytes, once") }
                checksumAt = valueStart
                tlvs.append(ProxyTLV(type: type, value: Array(value)))
            case .uniqueID:
                guard length <= maximumUniqueIDLength else {
                    throw ProxyProtocolError(.badTLV, "a unique ID of \(length) bytes, over \(maximumUniqueIDLength)")
                }
                tlvs.append(ProxyTLV(type: type, value: Array(value)))
            case .ssl:
                let tlv = ProxyTLV(type: type, value: Array(value))
                guard ProxyTLSInfo(value: tlv.value) != nil else { throw ProxyProtocolError(.badTLV, "a malformed SSL TLV") }
                tlvs.append(tlv)
            default:
                tlvs.append(ProxyTLV(type: type, value: Array(value)))
            }
            offset = valueStart + length
        }
        if let checksumAt {
            let received = UInt32(header[checksumAt]) << 24 | UInt32(header[checksumAt + 1]) << 16
                | UInt32(header[checksumAt + 2]) << 8 | UInt32(header[checksumAt + 3])
            var crc = CRC32C.update(CRC32C.begin, UnsafeRawBufferPointer(rebasing: header[0..<checksumAt]))
            withUnsafeBytes(of: UInt32(0)) { crc = CRC32C.update(crc, $0) }
            crc = CRC32C.update(crc, UnsafeRawBufferPointer(rebasing: header[(checksumAt + 4)...]))
            guard CRC32C.finish(crc) == received else {
                throw ProxyProtocolError(.checksumMismatch, "the CRC32C TLV does not match the header")
            }
        }
        return tlvs
    }
}
