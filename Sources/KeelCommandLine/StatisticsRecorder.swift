import Glibc
import KeelBuffers
import KeelEngine
import KeelSystem

/// Appends one CSV line per sample to a file: the process's resident memory and open descriptors,
/// the I/O threads' buffer pools (summed), and whatever counters the service adds. Soak runs
/// (`scripts/soak.sh`) plot these and check them for leaks.
///
/// Columns: `seconds,rss_kib,fds,buffers_in_use,buffers_held_by_kernel,slab_kib,failed_acquisitions`,
/// then one column per service counter, named as the service names them.
final class StatisticsRecorder {
    private let file: UnsafeMutablePointer<FILE>
    private let pool: IOPool
    private let counters: () -> [(name: String, value: Int)]
    private let start = ContinuousClock.now

    /// Opens (truncates) `path` and writes the header line.
    init(path: String, pool: IOPool, counters: @escaping () -> [(name: String, value: Int)]) throws(SystemError) {
        guard let file = fopen(path, "w") else { throw SystemError(code: errno, call: "fopen", context: path) }
        self.file = file
        self.pool = pool
        self.counters = counters
        let names = ["seconds", "rss_kib", "fds", "buffers_in_use", "buffers_held_by_kernel", "slab_kib", "failed_acquisitions"]
            + counters().map(\.name)
        write(names.joined(separator: ","))
    }

    deinit { fclose(file) }

    /// Takes one sample and appends it.
    func sample() {
        var inUse = 0, heldByKernel = 0, slabBytes = 0, failed = 0
        for thread in pool.threads {
            let statistics = thread.bufferPool.statistics
            inUse += statistics.inUse
            heldByKernel += statistics.heldByKernel
            slabBytes += statistics.slabBytes
            failed += statistics.failedAcquisitions
        }
        let tenths = (ContinuousClock.now - start) / .milliseconds(100)
        let values = [Self.residentKibibytes(), Descriptors.openDescriptors().count, inUse, heldByKernel, slabBytes / 1024, failed]
            + counters().map(\.value)
        write((["\(Int(tenths) / 10).\(Int(tenths) % 10)"] + values.map(String.init)).joined(separator: ","))
    }

    private func write(_ line: String) {
        fputs(line + "\n", file)
        fflush(file)
    }

    /// Resident set size from `/proc/self/statm` (its second field, in pages).
    static func residentKibibytes() -> Int {
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 128)
        let count = read(fd, &bytes, bytes.count)
        let fields = bytes[..<max(0, count)].split(separator: UInt8(ascii: " "))
        guard fields.count > 1, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE))) / 1024
    }
}
