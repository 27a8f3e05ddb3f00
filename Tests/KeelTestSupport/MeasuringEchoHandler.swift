import KeelBuffers
import KeelSockets

/// Echoes, and measures its own I/O thread's allocations between two message counts.
public struct MeasuringEchoHandler: TCPConnectionHandler {
    let warmup: Int
    let measured: Int
    let results: Collector<UInt64>
    var messages = 0
    var start: UInt64 = 0

    /// Reports the allocations between message `warmup` and message `warmup + measured` to `results`.
    public init(warmup: Int, measured: Int, results: Collector<UInt64>) {
        self.warmup = warmup
        self.measured = measured
        self.results = results
    }

    public mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        messages += 1
        if messages == warmup { start = AllocationCounter.currentThread }
        connection.write(buffer)
        if messages == warmup + measured { results.add(AllocationCounter.currentThread - start) }
    }
}
