// keel-udp-echo: a UDP echo server on Keel. Every datagram goes back to its sender, from the same
// pooled buffer it arrived in.
//
//   keel-udp-echo [--host 127.0.0.1] [--port 7007] [--backend io_uring|epoll] [--threads N] [--no-coalescing]
//
// A loop iteration's echoes leave together: runs to one sender as one segmented send (UDP GSO), the
// rest with sendmmsg. `--no-coalescing` sends each at once (one system call per datagram). With
// buffers of 68 KiB or more (`--buffer-kib 68`), the kernel also hands over runs of datagrams from one
// sender in one receive (UDP GRO), and each goes back whole.
//
// Prints `listening on HOST:PORT` when ready; SIGINT or SIGTERM shut it down cleanly. With several
// threads, each binds its own SO_REUSEPORT socket to the same port.
import ArgumentParser
import Glibc
import KeelBuffers
import KeelCommandLine
import KeelEngine
import KeelSockets
import KeelSystem

/// Sends every datagram back to its sender without copying it; a run the kernel coalesced goes back
/// whole, as one segmented send.
struct UDPEcho: UDPHandler {
    mutating func datagramReceived(_ datagram: consuming IOBuffer, from sender: SocketAddress, truncated: Bool, on socket: UDPSocket) {
        socket.send(datagram, to: sender)
    }

    mutating func datagramRunReceived(_ run: consuming IOBuffer, segmentSize: Int, from sender: SocketAddress, on socket: UDPSocket) {
        socket.send(run: run, segmentSize: segmentSize, to: sender)
    }
}

@main
struct KeelUDPEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keel-udp-echo", abstract: "A UDP echo server on Keel.")

    @OptionGroup var options: ServerOptions

    @Flag(help: "Send each echo at once instead of a loop iteration's echoes together (segmented or with sendmmsg).")
    var noCoalescing = false

    func run() throws {
        try options.runUntilSignalled("keel-udp-echo") { pool in
            let first = try UDPSocket.bind(pool: pool, on: pool.threads[0],
                                           configuration: .init(host: options.host, port: options.port, reusePort: true,
                                                                coalescesSends: !noCoalescing),
                                           handler: UDPEcho())
            var sockets = [first]
            for thread in pool.threads.dropFirst() {
                sockets.append(try UDPSocket.bind(pool: pool, on: thread,
                                                  configuration: .init(host: options.host, port: first.localAddress.port, reusePort: true,
                                                                       coalescesSends: !noCoalescing),
                                                  handler: UDPEcho()))
            }
            return RunningService(address: first.localAddress, summary: { Self.summary(sockets) })
        }
    }

    /// Datagrams echoed (and per second of this process's CPU time) and how many left in segmented
    /// sends, summed over the sockets.
    static func summary(_ sockets: [UDPSocket]) -> String {
        var sent = 0, segmented = 0, segmentedSends = 0, runs = 0
        for socket in sockets {
            // Read on the socket's thread (its counters are confined there); this thread waits.
            let box = Locked<UDPSocketStatistics?>(nil)
            let done = Semaphore()
            socket.thread.execute {
                box.withLock { $0 = socket.statistics }
                done.signal()
            }
            done.wait()
            guard let statistics = box.withLock({ $0 }) else { continue }
            sent += statistics.sent
            segmented += statistics.segmentedDatagrams
            segmentedSends += statistics.segmentedSends
            runs += statistics.receivedRuns
        }
        var cpu = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu)
        let cpuSeconds = Double(cpu.tv_sec) + Double(cpu.tv_nsec) / 1e9
        let perCPUSecond = cpuSeconds > 0 ? Int(Double(sent) / cpuSeconds) : 0
        return "\(sent) datagrams echoed, \(perCPUSecond) per CPU-second; \(segmented) of them in \(segmentedSends) segmented sends; \(runs) runs received whole"
    }
}
