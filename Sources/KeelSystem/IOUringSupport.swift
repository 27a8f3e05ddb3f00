import CKeelLinux
import Glibc
import SystemPackage

/// Whether this process can use io_uring, and why not when it cannot.
///
/// The probe is shared by production (backend choice) and tests (which backends to run). It reads
/// `/proc/sys/kernel/io_uring_disabled` and then really sets up a tiny ring: seccomp profiles and
/// hardened kernels answer that with EPERM, ENOSYS or EACCES.
public enum IOUringSupport {
    /// The probe's result.
    public enum Availability: Sendable, Equatable, CustomStringConvertible {
        /// io_uring works and has the features Keel needs.
        case available
        /// io_uring cannot be used; the string says why.
        case unavailable(String)

        public var description: String {
            switch self {
            case .available: return "available"
            case .unavailable(let why): return "unavailable (\(why))"
            }
        }
    }

    /// The cached probe result for this process.
    public static let availability: Availability = probe()

    /// True when ``availability`` is ``Availability/available``.
    public static var isAvailable: Bool { availability == .available }

    /// Runs the probe now (uncached).
    public static func probe() -> Availability {
        if let disabled = readSysctl("/proc/sys/kernel/io_uring_disabled"), disabled == 2 {
            return .unavailable("kernel.io_uring_disabled = 2")
        }
        var params = io_uring_params()
        let fd = ckeel_io_uring_setup(4, &params)
        if fd < 0 {
            let e = Errno(rawValue: ckeel_errno())
            return .unavailable("io_uring_setup: \(e)")
        }
        defer { _ = close(fd) }
        let required = CKEEL_FEAT_EXT_ARG | CKEEL_FEAT_NODROP | CKEEL_FEAT_SINGLE_MMAP
        if params.features & required != required {
            return .unavailable("kernel lacks EXT_ARG/NODROP/SINGLE_MMAP (need Linux 5.19 or later)")
        }
        // Provided buffer rings and multishot accept arrived in 5.19, with IORING_OP_URING_CMD (46):
        // the newest opcode tells the kernel's age without parsing its version string.
        let uringCommand: UInt8 = 46
        if ckeel_probe_opcode(fd, uringCommand) != 1 {
            return .unavailable("kernel older than 5.19")
        }
        return .available
    }

    private static func readSysctl(_ path: String) -> Int? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { _ = close(fd) }
        var bytes = [UInt8](repeating: 0, count: 16)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, 16) }
        guard n > 0 else { return nil }
        return Int(String(decoding: bytes[0..<n], as: UTF8.self).filter { $0.isNumber })
    }
}
