/// CRC-32C (Castagnoli, the polynomial 0x1EDC6F41 reflected: 0x82F63B78), as RFC 4960 appendix B
/// defines it for SCTP and the PROXY protocol uses it for `PP2_TYPE_CRC32C`. A checksum, not
/// cryptography; table-driven, one byte per step (headers are a few hundred bytes at most).
enum CRC32C {
    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 != 0 ? (value >> 1) ^ 0x82F6_3B78 : value >> 1 }
        return value
    }

    /// Continues a running checksum (start with `begin`, end with `finish`).
    static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var value = crc
        table.withUnsafeBufferPointer { table in
            for byte in bytes { value = table[Int((value ^ UInt32(byte)) & 0xFF)] ^ (value >> 8) }
        }
        return value
    }

    static let begin: UInt32 = 0xFFFF_FFFF
    static func finish(_ crc: UInt32) -> UInt32 { crc ^ 0xFFFF_FFFF }

    /// The checksum of `bytes`.
    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 { finish(update(begin, bytes)) }
}
