import Glibc
import KeelEngine
import KeelSystem
import Testing

import KeelTestSupport

/// The `keel-echo` binary built beside the test bundle, if it was built (`swift build --build-tests`).
let keelEchoPath: String? = {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { return nil }
    let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let directory = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    let candidate = directory + "/keel-echo"
    return access(candidate, X_OK) == 0 ? candidate : nil
}()

/// A child process with its stdout on a pipe.
struct ChildProcess {
    let pid: pid_t
    let stdout: Int32

    init(shellCommand: String) throws {
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw SystemError(code: errno, call: "pipe") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_addclose(&actions, pipeFDs[0])
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup(shellCommand), nil]
        defer { argv.forEach { free($0) } }
        let rc = posix_spawn(&pid, "/bin/sh", &actions, nil, argv, environ)
        Glibc.close(pipeFDs[1])
        guard rc == 0 else {
            Glibc.close(pipeFDs[0])
            throw SystemError(code: rc, call: "posix_spawn")
        }
        self.pid = pid
        self.stdout = pipeFDs[0]
    }

    /// Reads stdout until a line containing `marker` (or end of output). Returns that line.
    func readLine(containing marker: String) -> String? {
        var text = ""
        var byte: UInt8 = 0
        while Glibc.read(stdout, &byte, 1) == 1 {
            if byte == UInt8(ascii: "\n") {
                if text.contains(marker) { return text }
                text = ""
            } else {
                text.append(Character(UnicodeScalar(byte)))
            }
        }
        return nil
    }

    /// Sends `signal` and waits for the exit status.
    func stop(_ signal: Int32 = SIGTERM) -> Int32 {
        kill(pid, signal)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        Glibc.close(stdout)
        return status
    }

    var isRunning: Bool { kill(pid, 0) == 0 && waitpid(pid, nil, WNOHANG) == 0 }
}

@Suite("Descriptor exhaustion", .serialized, .enabled(if: keelEchoPath != nil, "keel-echo is not built beside the tests"))
struct DescriptorExhaustionTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func serverBacksOffWhenOutOfDescriptorsAndRecovers(backend: BackendKind) async throws {
        let child = try ChildProcess(
            shellCommand: "ulimit -n 40 && exec \(keelEchoPath!) --port 0 --threads 1 --backend \(backend.rawValue)")
        let result = await onPlainThread { () -> (String?, Int, Bool, Bool) in
            guard let line = child.readLine(containing: "listening on"),
                let port = line.split(separator: ":").last.flatMap({ UInt16($0) }),
                let address = try? SocketAddress(host: "127.0.0.1", port: port)
            else { return (nil, 0, false, false) }
            // Far more connections than the child has descriptors for.
            var clients: [RawClient] = []
            for _ in 0..<80 {
                if let client = try? RawClient(connectingTo: address) { clients.append(client) }
            }
            // Every connection the server could take still echoes.
            usleep(200_000)
            var served = 0
            for client in clients.prefix(5) {
                if client.send([1, 2, 3]) == 3, client.receive(count: 3) == [1, 2, 3] { served += 1 }
            }
            let aliveUnderPressure = child.isRunning
            clients.forEach { $0.close() }
            // After the peers leave, a new connection is served again.
            var recovered = false
            for _ in 0..<50 where !recovered {
                usleep(50_000)
                if let client = try? RawClient(connectingTo: address) {
                    recovered = client.send(Array("again".utf8)) == 5 && client.receive(count: 5) == Array("again".utf8)
                    client.close()
                }
            }
            return (line, served, aliveUnderPressure, recovered)
        }
        let status = child.stop()
        #expect(result.0 != nil, "keel-echo did not print its listening line")
        #expect(result.1 == 5, "connections accepted before exhaustion are served")
        #expect(result.2, "the server survives descriptor exhaustion")
        #expect(result.3, "the server accepts again once descriptors are free")
        #expect(status == 0, "clean exit on SIGTERM (status \(status))")
    }
}
