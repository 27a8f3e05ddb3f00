import CKeelLinux
import Glibc
import SystemPackage

/// Page-aligned memory from `mmap`, released with ``unmap()``.
///
/// Used for io_uring's shared rings, provided-buffer rings and buffer slabs.
public struct MappedMemory: Sendable {
    /// The start of the mapping. `@unchecked`-free: a raw address, owned by whoever holds the mapping.
    public let address: UInt
    /// Its length in bytes.
    public let length: Int

    /// The mapping as a raw pointer.
    public var pointer: UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: address)! }

    /// Maps `length` bytes of anonymous, private, zeroed memory.
    public static func anonymous(length: Int) throws(SystemError) -> MappedMemory {
        try map(length: length, fd: -1, offset: 0, flags: MAP_PRIVATE | MAP_ANONYMOUS, call: "mmap(anonymous)")
    }

    /// Maps `length` bytes of `fd` at `offset`, shared (io_uring ring regions).
    public static func shared(fd: Int32, offset: UInt64, length: Int) throws(SystemError) -> MappedMemory {
        try map(length: length, fd: fd, offset: offset, flags: MAP_SHARED | MAP_POPULATE, call: "mmap(io_uring)")
    }

    private static func map(length: Int, fd: Int32, offset: UInt64, flags: Int32, call: String)
        throws(SystemError) -> MappedMemory
    {
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, flags, fd, off_t(truncatingIfNeeded: offset))
        if p == MAP_FAILED || p == nil {
            throw SystemError(code: ckeel_errno(), call: call, context: "\(length) bytes")
        }
        return MappedMemory(address: UInt(bitPattern: p), length: length)
    }

    /// Unmaps the memory. The pointer must not be used afterwards.
    public func unmap() {
        _ = munmap(pointer, length)
    }
}
