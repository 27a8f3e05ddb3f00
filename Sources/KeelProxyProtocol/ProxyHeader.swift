import KeelSystem

/// A PROXY protocol header (HAProxy's PROXY protocol, versions 1 and 2): what a load balancer tells
/// the server about the connection it relays.
public struct ProxyHeader: Sendable, Hashable {
    /// The header's format on the wire.
    public enum Version: Int, Sendable, Hashable {
        /// The human-readable line (`PROXY TCP4 ...\r\n`).
        case v1 = 1
        /// The binary format, with TLVs.
        case v2 = 2
    }

    /// What the connection is.
    public enum Command: Sendable, Hashable {
        /// Made by the proxy itself (a health check): the real endpoints are the connection's own.
        case local
        /// Relayed for a client: the addresses are the original ones.
        case proxy
    }

    /// The relayed connection's transport.
    public enum TransportProtocol: Sendable, Hashable {
        case unspecified
        /// TCP, or a UNIX stream socket.
        case stream
        /// UDP, or a UNIX datagram socket.
        case datagram
    }

    /// The original endpoints.
    public enum Addresses: Sendable, Hashable {
        /// Not given (v1 `UNKNOWN`, v2 `AF_UNSPEC` or `LOCAL`): use the connection's own addresses.
        case unspecified
        /// IPv4 or IPv6 addresses with ports.
        case inet(source: SocketAddress, destination: SocketAddress)
        /// UNIX socket paths (the bytes up to the first NUL; an abstract socket's name keeps its
        /// leading NUL).
        case unix(source: [UInt8], destination: [UInt8])
    }

    public var version: Version
    public var command: Command
    public var transportProtocol: TransportProtocol
    public var addresses: Addresses
    /// The v2 TLVs in order, NOOP padding left out (empty for v1). Known types have accessors below;
    /// unknown ones stay here, raw.
    public var tlvs: [ProxyTLV]

    /// A header; `tlvs` only in version 2.
    public init(version: Version = .v2, command: Command = .proxy, transportProtocol: TransportProtocol = .stream,
                addresses: Addresses, tlvs: [ProxyTLV] = []) {
        self.version = version
        self.command = command
        self.transportProtocol = transportProtocol
        self.addresses = addresses
        self.tlvs = tlvs
    }

    /// The client's address, when the header names one (nil for LOCAL, UNKNOWN and UNIX sockets).
    public var sourceAddress: SocketAddress? {
        if command == .proxy, case .inet(let source, _) = addresses { return source }
        return nil
    }

    /// The address the client connected to, when the header names one.
    public var destinationAddress: SocketAddress? {
        if command == .proxy, case .inet(_, let destination) = addresses { return destination }
        return nil
    }

    /// The value of the first TLV of `type`.
    public func value(of type: ProxyTLV.Kind) -> [UInt8]? { tlvs.first { $0.type == type.rawValue }?.value }

    /// ALPN: the protocol the client negotiated with the proxy (e.g. `h2`).
    public var applicationProtocol: [UInt8]? { value(of: .alpn) }
    /// The host name the client asked for (TLS SNI, or another authority).
    public var authority: String? { value(of: .authority).map { String(decoding: $0, as: UTF8.self) } }
    /// The proxy's opaque identifier for the connection (at most 128 bytes).
    public var uniqueID: [UInt8]? { value(of: .uniqueID) }
    /// The network namespace the proxy accepted the connection in.
    public var networkNamespace: String? { value(of: .netns).map { String(decoding: $0, as: UTF8.self) } }
    /// What the proxy knows of the client's TLS session, if it terminated TLS.
    public var tls: ProxyTLSInfo? { value(of: .ssl).flatMap { ProxyTLSInfo(value: $0) } }
}

/// A PROXY protocol v2 type-length-value field.
public struct ProxyTLV: Sendable, Hashable {
    /// Registered types (PROXY protocol section 2.2).
    public struct Kind: RawRepresentable, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }

        public static let alpn = Kind(rawValue: 0x01)
        public static let authority = Kind(rawValue: 0x02)
        public static let crc32c = Kind(rawValue: 0x03)
        public static let noop = Kind(rawValue: 0x04)
        public static let uniqueID = Kind(rawValue: 0x05)
        public static let ssl = Kind(rawValue: 0x20)
        public static let netns = Kind(rawValue: 0x30)
    }

    /// The type byte.
    public var type: UInt8
    /// The value.
    public var value: [UInt8]

    public init(_ kind: Kind, _ value: [UInt8]) {
        type = kind.rawValue
        self.value = value
    }

    public init(type: UInt8, value: [UInt8]) {
        self.type = type
        self.value = value
    }
}

/// The `PP2_TYPE_SSL` TLV: whether the client spoke TLS to the proxy, and with what.
public struct ProxyTLSInfo: Sendable, Hashable {
    /// `PP2_CLIENT_*` bits: 0x01 TLS, 0x02 a certificate on this connection, 0x04 on the session.
    public var clientFlags: UInt8
    /// 0 when the client presented a certificate and it was verified.
    public var verifyResult: UInt32
    /// The sub-TLVs, raw (version 0x21, common name 0x22, cipher 0x23, signature 0x24, key 0x25).
    public var fields: [ProxyTLV]

    /// The client connected over TLS.
    public var clientUsedTLS: Bool { clientFlags & 0x01 != 0 }
    /// The client presented a certificate on this connection and it verified.
    public var clientCertificateVerified: Bool { clientFlags & 0x02 != 0 && verifyResult == 0 }
    /// The TLS version, e.g. `TLSv1.3`.
    public var version: String? { string(0x21) }
    /// The client certificate's subject common name.
    public var commonName: String? { string(0x22) }
    /// The cipher, e.g. `TLS_AES_128_GCM_SHA256`.
    public var cipher: String? { string(0x23) }
    /// The algorithm that signed the proxy's certificate.
    public var signatureAlgorithm: String? { string(0x24) }
    /// The algorithm of the proxy certificate's key.
    public var keyAlgorithm: String? { string(0x25) }

    private func string(_ type: UInt8) -> String? {
        fields.first { $0.type == type }.map { String(decoding: $0.value, as: UTF8.self) }
    }

    /// Reads a `PP2_TYPE_SSL` value; nil when it is malformed.
    init?(value: [UInt8]) {
        guard value.count >= 5 else { return nil }
        clientFlags = value[0]
        verifyResult = UInt32(value[1]) << 24 | UInt32(value[2]) << 16 | UInt32(value[3]) << 8 | UInt32(value[4])
        guard let fields = value.withUnsafeBytes({ ProxyTLVReader.read(UnsafeRawBufferPointer(rebasing: $0[5...])) }) else { return nil }
        self.fields = fields
    }

    /// A TLS TLV's value from its parts.
    public init(clientFlags: UInt8, verifyResult: UInt32, fields: [ProxyTLV]) {
        self.clientFlags = clientFlags
        self.verifyResult = verifyResult
        self.fields = fields
    }

    /// The TLV's value bytes.
    public var value: [UInt8] {
        var bytes = [clientFlags, UInt8(verifyResult >> 24), UInt8(truncatingIfNeeded: verifyResult >> 16),
                     UInt8(truncatingIfNeeded: verifyResult >> 8), UInt8(truncatingIfNeeded: verifyResult)]
        for field in fields { ProxyTLVReader.append(field, to: &bytes) }
        return bytes
    }
}

/// Reads and writes TLV sequences.
enum ProxyTLVReader {
    /// The TLVs that fill `bytes` exactly (NOOP left out); nil when one runs past the end.
    static func read(_ bytes: UnsafeRawBufferPointer) -> [ProxyTLV]? {
        var tlvs: [ProxyTLV] = []
        var offset = 0
        while offset < bytes.count {
            guard bytes.count - offset >= 3 else { return nil }
            let type = bytes[offset]
            let length = Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2])
            guard bytes.count - offset - 3 >= length else { return nil }
            if type != ProxyTLV.Kind.noop.rawValue {
                tlvs.append(ProxyTLV(type: type, value: Array(bytes[(offset + 3)..<(offset + 3 + length)])))
            }
            offset += 3 + length
        }
        return tlvs
    }

    static func append(_ tlv: ProxyTLV, to bytes: inout [UInt8]) {
        bytes.append(tlv.type)
        bytes.append(UInt8(truncatingIfNeeded: tlv.value.count >> 8))
        bytes.append(UInt8(truncatingIfNeeded: tlv.value.count))
        bytes.append(contentsOf: tlv.value)
    }
}

/// Why a PROXY protocol header was refused.
public struct ProxyProtocolError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of fault.
    public enum Kind: String, Sendable, Hashable {
        /// The bytes are not a PROXY protocol header (wrong signature).
        case notProxyProtocol
        /// A v2 version other than 2, or a command other than LOCAL and PROXY.
        case unsupportedVersionOrCommand
        /// A v2 family or protocol byte the spec does not define.
        case unsupportedAddressFamily
        /// A v1 line that is not exactly the spec's format (its fields, spaces, CRLF).
        case malformedLine
        /// An address or port that does not parse, or does not match the family.
        case badAddress
        /// The v2 length is shorter than the addresses it must hold, or the TLVs do not fill it exactly.
        case badLength
        /// A TLV that is malformed (SSL, unique ID over 128 bytes).
        case badTLV
        /// The CRC32C TLV does not match the header.
        case checksumMismatch
        /// Longer than the size cap (107 bytes for v1, the configured cap for v2).
        case tooLarge
    }

    public var kind: Kind
    /// What exactly was wrong, for logs.
    public var detail: String

    public init(_ kind: Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    public var description: String { "PROXY protocol: \(kind.rawValue): \(detail)" }
}
