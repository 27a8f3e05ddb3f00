import KeelBuffers
import KeelEngine
import KeelSockets
import KeelSystem
import Synchronization

/// One load socket's counters (confined to its I/O thread).
final class UDPLoad: @unchecked Sendable {
    // @unchecked Sendable: touched only on the socket's I/O thread; `progress` is atomic.
    let size: Int
    let window: Int
    let phase: Phase
    let target: SocketAddress
    var socket: UDPSocket?
    var nextSequence: UInt64 = 0
    var outstanding = 0
    var received = 0
    var sent = 0
    var highest: UInt64 = 0
    var reordered = 0
    var corrupted = 0
    var receivedSinceTick = 0
    let progress = Atomic<Int>(0)

    init(size: Int, window: Int, phase: Phase, target: SocketAddress) {
        self.size = max(16, size)
        self.window = window
        self.phase = phase
        self.target = target
    }

    /// Keeps `window` datagrams in flight.
    func fill() {
        guard let socket, phase.current != Phase.stopping else { return }
        while outstanding < window {
            guard var buffer = try? socket.thread.bufferPool.acquire() else { return }
            var sequence = nextSequence
            _ = withUnsafeBytes(of: &sequence) { buffer.append($0) }
            buffer.append(contentsOf: repeatElement(UInt8(truncatingIfNeeded: nextSequence), count: size - 8))
            nextSequence += 1
            outstanding += 1
            sent += 1
            socket.send(buffer, to: target)
        }
    }

    /// A stalled window (datagrams lost) is written off so the load goes on.
    func tick() {
        if receivedSinceTick == 0 && outstanding > 0 { outstanding = 0 }
        receivedSinceTick = 0
        fill()
    }
}

/// Counts echoes, checks their payload, and refills the window.
struct UDPLoadHandler: UDPHandler {
    let load: UDPLoad

    mutating func datagramReceived(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool, on socket: UDPSocket) {
        let (sequence, intact) = datagram.withUnsafeReadableBytes { bytes -> (UInt64, Bool) in
            guard bytes.count >= 8 else { return (0, false) }
            let sequence = bytes.loadUnaligned(as: UInt64.self)
            let fill = UInt8(truncatingIfNeeded: sequence)
            return (sequence, bytes.count == load.size && bytes[8...].allSatisfy { $0 == fill })
        }
        if !intact { load.corrupted += 1 }
        if sequence < load.highest { load.reordered += 1 } else { load.highest = sequence }
        load.received += 1
        load.receivedSinceTick += 1
        load.outstanding = max(0, load.outstanding - 1)
        if load.phase.current == Phase.measuring { load.progress.wrappingAdd(1, ordering: .relaxed) }
        load.fill()
    }
}

/// `udp`: datagrams per second, loss and reordering against a UDP echo server; with `serverProcess`
/// (a process ID on this machine), also the server's CPU time over the measured window
/// (`server_cpu_s`) and echoed datagrams per server CPU-second.
public func runUDPBenchmark(target: SocketAddress, sockets: Int, size: Int, window: Int, warmup: Duration,
                            duration: Duration, pool: IOPool, serverProcess: Int32? = nil) async -> BenchResult {
    let phase = Phase()
    var loads: [UDPLoad] = []
    var timers: [(IOThread, TimerHandle)] = []
    for _ in 0..<sockets {
        let load = UDPLoad(size: size, window: window, phase: phase, target: target)
        guard let socket = try? UDPSocket.bind(
            pool: pool, configuration: .init(host: localHost(reaching: target), port: 0,
                                             receiveBufferSize: 4 << 20, sendLimits: .init(maximumDatagrams: window * 2)),
            handler: UDPLoadHandler(load: load))
        else { continue }
        load.socket = socket
        loads.append(load)
        let handle: TimerHandle? = try? await socket.thread.submit {
            load.fill()
            return socket.thread.scheduleTimer(after: .milliseconds(20), repeating: .milliseconds(20)) { load.tick() }
        }
        if let handle { timers.append((socket.thread, handle)) }
    }
    try? await Task.sleep(for: warmup)
    let before = await totals(loads)
    let cpuBefore = serverProcess.flatMap(processCPUSeconds)
    phase.set(Phase.measuring)
    let start = ContinuousClock.now
    let progress = ProgressLine()
    let counted = loads
    await runFor(duration, label: "udp", progress: progress) { counted.reduce(0) { $0 + $1.progress.load(ordering: .relaxed) } }
    let seconds = (ContinuousClock.now - start).seconds
    let cpuAfter = serverProcess.flatMap(processCPUSeconds)
    let echoedInWindow = await totals(loads).received - before.received
    phase.set(Phase.stopping)
    try? await Task.sleep(for: .milliseconds(300))  // late echoes still count
    progress.finish()
    for (thread, timer) in timers { thread.execute { thread.cancelTimer(timer) } }
    let after = await totals(loads)
    for load in loads { load.socket?.close() }
    var result = BenchResult(mode: "udp", seconds: seconds)
    result.unit = "datagrams"
    result.messages = after.received - before.received
    result.bytes = result.messages * max(16, size)
    result.lost = max(0, (after.sent - before.sent) - (after.received - before.received))
    result.reordered = after.reordered - before.reordered
    result.validationFailures = after.corrupted
    result.connections = loads.count
    result.errors = sockets - loads.count
    if let cpuBefore, let cpuAfter {
        let cpu = cpuAfter - cpuBefore
        result.extra.append(("server_cpu_s", format(cpu, digits: 3)))
        if cpu > 0 { result.extra.append(("datagrams_per_server_cpu_s", format(Double(echoedInWindow) / cpu, digits: 0))) }
    }
    return result
}

/// The address to bind a load socket to: loopback for a loopback target, any address otherwise (a
/// server in a network namespace, reached over a veth pair).
private func localHost(reaching target: SocketAddress) -> String {
    if target.host.hasPrefix("127.") || target.host == "::1" { return target.family == .ipv4 ? "127.0.0.1" : "::1" }
    return target.family == .ipv4 ? "0.0.0.0" : "::"
}

private func totals(_ loads: [UDPLoad]) async -> (sent: Int, received: Int, reordered: Int, corrupted: Int) {
    var total = (sent: 0, received: 0, reordered: 0, corrupted: 0)
    for load in loads {
        guard let socket = load.socket,
            let part = try? await socket.thread.submit({ (load.sent, load.received, load.reordered, load.corrupted) })
        else { continue }
        total.sent += part.0
        total.received += part.1
        total.reordered += part.2
        total.corrupted += part.3
    }
    return total
}
