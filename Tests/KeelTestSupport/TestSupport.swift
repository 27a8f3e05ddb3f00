import Glibc
import CKeelAllocationCounter
import KeelEngine
import KeelSystem

/// The backends the engine tests run on: the one `KEEL_BACKEND` names, or every backend this host
/// supports (epoll always; io_uring when the probe passes). A requested but unavailable io_uring
/// yields no cases, so those tests are skipped rather than passed.
public let backendsUnderTest: [BackendKind] = {
    if let requested = BackendKind.fromEnvironment {
        if requested == .ioUring && !IOUringSupport.isAvailable {
            print("KEEL_BACKEND=io_uring but io_uring is \(IOUringSupport.availability): skipping io_uring cases")
            return []
        }
        return [requested]
    }
    return IOUringSupport.isAvailable ? [.ioUring, .epoll] : [.epoll]
}()

/// Starts a pool on `backend`, runs `body`, and always shuts the pool down.
public func withPool<Result>(
    _ backend: BackendKind, threads: Int = 1, ringEntries: UInt32 = 256,
    _ body: (IOPool) async throws -> Result
) async throws -> Result {
    let pool = try IOPool(configuration: .init(threadCount: threads, backend: backend, ringEntries: ringEntries,
                                               workPoolThreadCount: 2))
    do {
        let result = try await body(pool)
        pool.shutdown()
        return result
    } catch {
        pool.shutdown()
        throw error
    }
}

/// Runs `start` on `thread` and suspends until the code it starts calls `finish` (on any thread).
public func onThread<Value: Sendable>(
    _ thread: IOThread, _ start: @escaping @Sendable (_ finish: @escaping @Sendable (Value) -> Void) -> Void
) async -> Value {
    await withCheckedContinuation { continuation in
        thread.execute {
            start { value in continuation.resume(returning: value) }
        }
    }
}

/// Heap allocations counted by the test executable's malloc interposer.
public enum AllocationCounter {
    /// True when the interposer is linked in and counting.
    public static var isActive: Bool { ckeel_allocation_counter_active() != 0 }
    /// Allocations made so far by the calling thread.
    public static var currentThread: UInt64 { ckeel_thread_allocations() }

    /// Debugging aid: while on, every allocation on the calling thread prints a backtrace to stderr.
    public static func trace(_ on: Bool) { ckeel_allocation_trace(on ? 1 : 0) }

    /// Allocations the calling thread makes while running `body`.
    public static func count(_ body: () throws -> Void) rethrows -> UInt64 {
        let before = ckeel_thread_allocations()
        try body()
        return ckeel_thread_allocations() - before
    }
}

/// A value shared between a test and the I/O thread it drives; all access is on that one thread or
/// after the test has synchronised with it (through `onThread`), so no lock is needed.
public final class ThreadConfined<Value>: @unchecked Sendable {
    // @unchecked Sendable: used only on one I/O thread at a time, with hand-offs ordered by the
    // continuation resume (a happens-before edge).
    public var value: Value
    public init(_ value: Value) { self.value = value }
}

import Testing

/// `#expect` for conditions over noncopyable values (which the macro cannot capture): the condition
/// is evaluated first, then recorded at the caller's source location.
public func check(
    _ condition: Bool, _ comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(condition, comment, sourceLocation: sourceLocation)
}

/// The open descriptors, after making sure the concurrency runtime has created its own lazily
/// opened ones (libdispatch opens a timerfd on the first `Task.sleep`), so a later comparison sees
/// only what the code under test opened or leaked.
public func openDescriptorsBaseline() async -> [Int32] {
    try? await Task.sleep(for: .milliseconds(1))
    return Descriptors.openDescriptors()
}

/// Collects results from I/O threads and lets a test wait for them with a deadline.
public final class Collector<Value: Sendable>: Sendable {
    private let values = Locked<[Value]>([])

    public init() {}

    public func add(_ value: Value) { values.withLock { $0.append(value) } }
    public var snapshot: [Value] { values.withLock { $0 } }

    /// Waits until `count` values arrived or `timeout` passed. - Returns: the values so far.
    public func wait(for count: Int, timeout: Duration = .seconds(20)) async -> [Value] {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let current = snapshot
            if current.count >= count { return current }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return snapshot
    }
}

/// Waits until `condition` holds or `timeout` passes. - Returns: whether it held.
public func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return condition()
}


/// Which socket tables ``openSockets(ports:transport:)`` reads.
public enum SocketTransport: Sendable {
    case tcp, udp
}

/// This process's descriptors that are sockets of `transport` (IPv4 or IPv6) with one of `ports` as
/// their local or remote port, from `/proc/net/{tcp,tcp6}` or `/proc/net/{udp,udp6}` and `/proc/self/fd`.
///
/// A leak check that counts every open descriptor is wrong while other tests run in parallel; one that
/// looks only at the sockets of its own server's port sees exactly what that test opened (its
/// listeners, the connections they accepted and the clients that connected to them). Only the test's
/// own transport: a UDP port's number is often some other test's TCP connection's port too.
public func openSockets(ports: [UInt16], transport: SocketTransport = .tcp) -> [Int32] {
    var inodes = Set<String>()
    for table in transport == .tcp ? ["tcp", "tcp6"] : ["udp", "udp6"] {
        for line in readLines("/proc/net/\(table)").dropFirst() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 9 else { continue }
            let endpoints = [fields[1], fields[2]].compactMap { $0.split(separator: ":").last.flatMap { UInt16($0, radix: 16) } }
            if endpoints.contains(where: ports.contains) && fields[9] != "0" { inodes.insert(String(fields[9])) }
        }
    }
    guard !inodes.isEmpty else { return [] }
    return Descriptors.openDescriptors().filter { fd in
        var target = [CChar](repeating: 0, count: 64)
        let length = readlink("/proc/self/fd/\(fd)", &target, target.count - 1)
        guard length > 0 else { return false }
        let text = String(decoding: target[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard text.hasPrefix("socket:["), text.hasSuffix("]") else { return false }
        return inodes.contains(String(text.dropFirst(8).dropLast()))
    }
}

/// The lines of a (small) text file, or none if it cannot be read.
func readLines(_ path: String) -> [Substring] {
    guard let file = fopen(path, "r") else { return [] }
    defer { fclose(file) }
    var text: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n <= 0 { break }
        text += chunk[..<n]
    }
    return String(decoding: text, as: UTF8.self).split(separator: "\n")
}

/// Runs blocking client code on a thread of its own and awaits its result: never on the concurrency
/// runtime's few threads, which tests running in parallel would otherwise fill with blocked clients
/// while a server's shutdown task (or an I/O thread's async work) waits for one.
public func blocking<Value: Sendable>(_ body: @escaping @Sendable () throws -> Value) async throws -> Value {
    try await withCheckedThrowingContinuation { continuation in
        SystemThread.spawn(name: "test-client") { continuation.resume(with: Result { try body() }) }.detach()
    }
}

/// ``blocking(_:)`` for code that cannot throw.
public func onPlainThread<Value: Sendable>(_ body: @escaping @Sendable () -> Value) async -> Value {
    await withCheckedContinuation { continuation in
        SystemThread.spawn(name: "test-client") { continuation.resume(returning: body()) }.detach()
    }
}

/// Runs a shell command. - Returns: its standard output.
public func shellOutput(_ command: String) -> String {
    guard let pipe = popen(command, "r") else { return "" }
    defer { pclose(pipe) }
    var output: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = fread(&chunk, 1, chunk.count, pipe)
        output += chunk[..<count]
        if count < chunk.count { break }
    }
    return String(decoding: output, as: UTF8.self)
}

/// A self-signed P-256 certificate for `localhost` and 127.0.0.1, made with the openssl command in a
/// directory of its own (`cert.pem`, `key.pem`) for a test's TLS server; ``remove()`` deletes it.
public struct TestCertificate: Sendable {
    /// The directory holding the files (free for the test's other files too).
    public let directory: String
    /// The PEM certificate (also the trust root clients use).
    public var certificate: String { "\(directory)/cert.pem" }
    /// The PEM private key.
    public var key: String { "\(directory)/key.pem" }

    /// Makes the certificate in `/tmp/keel-NAME-PID-XXXXXX`. openssl runs on a thread of its own: a
    /// blocked runtime thread would stall other tests' tasks.
    public init(name: String) async throws {
        var template = Array("/tmp/keel-\(name)-\(getpid())-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw SystemError(code: errno, call: "mkdtemp") }
        let directory = String(cString: made)
        self.directory = directory
        let status = try await blocking {
            system("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout \(directory)/key.pem "
                + "-out \(directory)/cert.pem -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null")
        }
        guard status == 0 else { throw SystemError(code: EIO, call: "openssl req", context: "exit status \(status)") }
    }

    /// Deletes the directory and everything in it.
    public func remove() { _ = system("rm -rf \(directory)") }
}
