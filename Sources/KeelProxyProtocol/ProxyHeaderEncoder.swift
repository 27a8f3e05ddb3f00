import KeelSystem

extension ProxyHeader {
    /// The header's bytes on the wire, in its ``version``'s format.
    ///
    /// Version 1 has no room for UNIX addresses, TLVs or LOCAL: those go out as `PROXY UNKNOWN`.
    /// IPv6 addresses are written as eight hexadecimal groups. With `checksum`, a version 2 header gets
    /// a CRC32C TLV (RFC 4960's CRC of the whole header, the TLV's value zeroed while computing it).
    public func encoded(checksum: Bool = false) -> [UInt8] {
        version == .v1 ? encodedV1() : encodedV2(checksum: checksum)
    }

    private func encodedV1() -> [UInt8] {
        guard command == .proxy, case .inet(let source, let destination) = addresses, source.family == destination.family else {
            return Array("PROXY UNKNOWN\r\n".utf8)
        }
        let family = source.family == .ipv4 ? "TCP4" : "TCP6"
        let line = "PROXY \(family) \(Self.v1Text(source)) \(Self.v1Text(destination)) \(source.port) \(destination.port)\r\n"
        return Array(line.utf8)
    }

    /// The canonical v1 form: dotted decimal, or eight hexadecimal groups (no embedded IPv4 form).
    private static func v1Text(_ address: SocketAddress) -> String {
        guard address.family == .ipv6 else { return address.host }
        let bytes = address.addressBytes
        return stride(from: 0, to: 16, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }
            .joined(separator: ":")
    }

    private func encodedV2(checksum: Bool) -> [UInt8] {
        var bytes = ProxyHeaderParser.v2Signature
        bytes.append(command == .local ? 0x20 : 0x21)
        let transportNibble: UInt8 = switch transportProtocol {
        case .unspecified: 0
        case .stream: 1
        case .datagram: 2
        }
        var body: [UInt8] = []
        var familyNibble: UInt8 = 0
        switch addresses {
        case .unspecified:
            break
        case .inet(let source, let destination) where source.family == destination.family:
            familyNibble = source.family == .ipv4 ? 1 : 2
            body += source.addressBytes + destination.addressBytes
            body += [UInt8(source.port >> 8), UInt8(source.port & 0xFF), UInt8(destination.port >> 8), UInt8(destination.port & 0xFF)]
        case .inet:
            break  // mixed families cannot be written: unspecified
        case .unix(let source, let destination):
            familyNibble = 3
            body += Self.sunPath(source) + Self.sunPath(destination)
        }
        bytes.append(familyNibble == 0 ? 0 : familyNibble << 4 | transportNibble)
        if familyNibble != 0 {
            for tlv in tlvs where tlv.type != ProxyTLV.Kind.crc32c.rawValue { ProxyTLVReader.append(tlv, to: &body) }
        }
        let checksumAt = checksum && familyNibble != 0 ? 16 + body.count + 3 : nil
        if checksumAt != nil { ProxyTLVReader.append(ProxyTLV(.crc32c, [0, 0, 0, 0]), to: &body) }
        bytes += [UInt8(body.count >> 8), UInt8(body.count & 0xFF)]
        bytes += body
        if let checksumAt {
            let crc = bytes.withUnsafeBytes { CRC32C.checksum($0) }
            bytes[checksumAt] = UInt8(crc >> 24)
            bytes[checksumAt + 1] = UInt8(truncatingIfNeeded: crc >> 16)
            bytes[checksumAt + 2] = UInt8(truncatingIfNeeded: crc >> 8)
            bytes[checksumAt + 3] = UInt8(truncatingIfNeeded: crc)
        }
        return bytes
    }

    /// A 108-byte `sun_path`, NUL-padded.
    private static func sunPath(_ path: [UInt8]) -> [UInt8] {
        Array(path.prefix(108)) + [UInt8](repeating: 0, count: max(0, 108 - path.count))
    }
}
