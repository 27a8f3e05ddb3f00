import Glibc
import KeelSystem
import KeelTestSupport
import Synchronization
import Testing

/// keel-server as a process, started by the tests from the build directory.
final class ServerProcess: Sendable {
    /// What the server printed, shared with the thread reading it.
    final class Lines: Sendable {
        let lock = Mutex<[String]>([])
        func withLock<Result>(_ body: (inout [String]) -> Result) -> Result { lock.withLock { body(&$0) } }
    }

    let pid: pid_t
    private let lines = Lines()

    /// The keel-server executable next to the test bundle.
    static var executable: String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let path = String(decoding: buffer[..<max(0, count)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)]) + "/keel-server"
    }

    init(_ arguments: [String]) throws {
        // Under AddressSanitizer the server's own leak report at exit would turn its exit status
        // nonzero; leaks are checked in-process by the rest of the suite, not through these children.
        let environment = ChildProcess.currentEnvironment.filter { !$0.hasPrefix("ASAN_OPTIONS=") } + ["ASAN_OPTIONS=detect_leaks=0"]
        let lines = self.lines
        pid = try ChildProcess.spawn([Self.executable] + arguments, environment: environment) { line in
            lines.withLock { $0.append(line) }
        }.pid
    }

    var output: [String] { lines.withLock { $0 } }

    /// Waits for a line containing `text` (up to 30 s). - Returns: the line.
    func waitForLine(containing text: String, after skipping: Int = 0) -> String? {
        for _ in 0..<3000 {
            if let line = output.dropFirst(skipping).first(where: { $0.contains(text) }) { return line }
            usleep(10_000)
        }
        return nil
    }

    /// The port announced for `endpoint`.
    func port(of endpoint: String) -> UInt16? {
        guard let line = output.first(where: { $0.hasPrefix("listening on ") && $0.hasSuffix("(\(endpoint))") }) else { return nil }
        return line.split(separator: " ")[2].split(separator: ":").last.flatMap { UInt16($0) }
    }

    /// The supervisor's worker processes (its children).
    var children: [pid_t] {
        guard let text = readFile("/proc/\(pid)/task/\(pid)/children") else { return [] }
        return text.split(separator: " ").compactMap { pid_t($0) }
    }

    /// ``waitForLine(containing:after:)`` on a thread of its own (a blocked runtime thread would stall
    /// other tests' tasks).
    func line(containing text: String) async -> String? {
        (try? await blocking { self.waitForLine(containing: text) }) ?? nil
    }

    /// ``terminate()`` on a thread of its own.
    func stop() async -> Int32 {
        (try? await blocking { self.terminate() }) ?? -2
    }

    /// Sends SIGTERM and waits. - Returns: the exit status (-1 for a signal).
    func terminate() -> Int32 {
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
    }
}

/// Echoes one message on a new connection. - Returns: true when it came back.
func echoOnce(port: UInt16, _ text: String = "ping") -> Bool {
    guard let address = try? SocketAddress(host: "127.0.0.1", port: port), let client = try? TestClient(address) else { return false }
    defer { client.close() }
    client.send(text)
    return client.read(text.utf8.count) == Array(text.utf8)
}

// Not in sanitizer builds (recognised by malloc not being interposed): each worker there is an
// instrumented keel-server process of its own, and running several beside the rest of the suite
// starved unrelated timing-bound tests. Plain builds run them on CI.
@Suite("keel-server workers", .serialized,
       .enabled(if: access(ServerProcess.executable, X_OK) == 0, "keel-server is not built next to the tests"),
       .enabled(if: AllocationCounter.isActive, "a sanitizer build (see above)"))
struct WorkerProcessTests {
    let config: String

    init() throws {
        config = "/tmp/keel-workers-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).yaml"
        let text = """
        shutdown-deadline: 2s
        endpoints:
          - { name: echo, listen: 127.0.0.1:0, plugin: echo }
        admin: { listen: 127.0.0.1:0 }

        """
        let file = try #require(fopen(config, "w"))
        fputs(text, file)
        fclose(file)
    }

    @Test(.timeLimit(.minutes(1)))
    func aKilledWorkerIsRestartedWhileTheOthersKeepServing() async throws {
        defer { unlink(config) }
        let server = try ServerProcess(["--config", config, "--workers", "2", "--threads", "1", "--log-level", "warning"])
        #expect(await server.line(containing: "(admin)") != nil)
        let port = try #require(server.port(of: "echo"))
        let admin = try #require(server.port(of: "admin"))
        #expect(server.output.filter { $0.hasPrefix("listening on ") } .count == 2)  // once per listener, not per worker
        #expect(server.children.count == 2)
        let victim = try #require(server.children.first)
        let served = try await blocking { () -> (before: Bool, during: Int, failures: Int) in
            let before = echoOnce(port: port)
            kill(victim, SIGKILL)
            usleep(100_000)
            var failures = 0
            for index in 0..<50 where !echoOnce(port: port, "message \(index)") { failures += 1 }
            return (before, 50, failures)
        }
        #expect(served.before)
        #expect(served.failures == 0, "\(served.failures) of \(served.during) connections failed while a worker was down")
        #expect(await server.line(containing: "pid \(victim)) exited (signal 9); restarting") != nil)
        #expect(await eventually { server.children.count == 2 && !server.children.contains(victim) })
        // The supervisor's admin listener sums the workers' counters.
        let summed = try await blocking { () -> String in
            for _ in 0..<20 { _ = echoOnce(port: port) }
            for _ in 0..<100 {
                let json = try httpGet(try SocketAddress(host: "127.0.0.1", port: admin), "/status.json").body
                if json.contains("\"threads\":2") { return json }
                usleep(50_000)
            }
            return ""
        }
        #expect(summed.contains("\"threads\":2"), "\(summed)")
        #expect(await server.stop() == 0)
        #expect(server.children.isEmpty)
    }

    @Test(.timeLimit(.minutes(1)))
    func aReloadAddsAnEndpointToEveryWorkerOnOnePort() async throws {
        defer { unlink(config) }
        let server = try ServerProcess(["--config", config, "--workers", "2", "--threads", "1", "--log-level", "warning"])
        #expect(await server.line(containing: "(admin)") != nil)
        let echo = try #require(server.port(of: "echo"))
        let text = """
        shutdown-deadline: 2s
        endpoints:
          - { name: echo, listen: 127.0.0.1:0, plugin: echo }
          - { name: extra, listen: 127.0.0.1:0, framing: line, plugin: echo }
        admin: { listen: 127.0.0.1:0 }

        """
        let file = try #require(fopen(config, "w"))
        fputs(text, file)
        fclose(file)
        kill(server.pid, SIGHUP)
        #expect(await server.line(containing: "(extra)") != nil)
        let extra = try #require(server.port(of: "extra"))
        #expect(await server.line(containing: "worker 1: keel-server: reloaded") != nil)
        #expect(await server.line(containing: "worker 0: keel-server: reloaded") != nil)
        // Connections spread over both workers: every one is served on the new endpoint, and the old
        // endpoint kept its port.
        let served = try await blocking { () -> Int in
            (0..<20).filter { _ in echoOnce(port: extra, "line\n") }.count
        }
        #expect(served == 20)
        #expect(try await blocking { echoOnce(port: echo) })
        #expect(await server.stop() == 0)
    }

    @Test(.timeLimit(.minutes(1)))
    func aRollingRestartReplacesEveryWorkerWithoutRefusingAConnection() async throws {
        defer { unlink(config) }
        let server = try ServerProcess(["--config", config, "--workers", "2", "--threads", "1", "--log-level", "warning"])
        #expect(await server.line(containing: "(admin)") != nil)
        let port = try #require(server.port(of: "echo"))
        let before = Set(server.children)
        #expect(before.count == 2)
        let stop = Atomic<Bool>(false)
        let load = Task.detached { () -> (Int, Int) in
            try await blocking { () -> (Int, Int) in
                var (attempts, failures) = (0, 0)
                while !stop.load(ordering: .relaxed) {
                    attempts += 1
                    if !echoOnce(port: port, "during restart \(attempts)") { failures += 1 }
                }
                return (attempts, failures)
            }
        }
        try await Task.sleep(for: .milliseconds(200))
        kill(server.pid, SIGUSR2)
        #expect(await server.line(containing: "worker 1 replaced") != nil)
        #expect(await eventually { Set(server.children).isDisjoint(with: before) && server.children.count == 2 })
        try await Task.sleep(for: .milliseconds(200))
        stop.store(true, ordering: .relaxed)
        let (attempts, failures) = try await load.value
        #expect(attempts > 10)
        // A worker's listener closes when it drains. Linux moves the connections queued on it to the
        // other workers' listeners when net.ipv4.tcp_migrate_req is 1 (5.14+); with 0, the few that
        // arrived in the instant before the close are reset.
        let migrates = readFile("/proc/sys/net/ipv4/tcp_migrate_req")?.hasPrefix("1") ?? false
        #expect(failures <= (migrates ? 0 : 3), "\(failures) of \(attempts) connections failed during the rolling restart")
        #expect(await server.stop() == 0)
    }
}
