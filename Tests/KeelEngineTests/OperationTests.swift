import CKeelLinux
import Glibc
import KeelBuffers
import KeelSystem
import Testing

@testable import KeelEngine
import KeelTestSupport

/// Counts a multishot receive's completions and bytes; runs `onFinal` at the last completion.
final class CountingHandler: IOCompletionHandler, @unchecked Sendable {
    // @unchecked Sendable: used only on the I/O thread it was submitted on.
    let thread: IOThread
    var completions = 0
    var bytes = 0
    var onFinal: (() -> Void)?

    init(thread: IOThread) { self.thread = thread }

    override func complete(_ completion: IOCompletion) {
        completions += 1
        if let buffer = thread.takeReceivedBuffer(completion) { bytes += buffer.readableBytes }
        if !completion.hasMore {
            onFinal?()
            onFinal = nil
        }
    }
}

/// Watches a handler's lifetime without keeping it alive.
final class WeakHandler: @unchecked Sendable {
    // @unchecked Sendable: read and written only on the I/O thread.
    weak var handler: CountingHandler?
}

@Suite("Operations through the backend")
struct OperationTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func nopCompletesWithZero(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let completion: IOCompletion = await onThread(thread) { finish in
                thread.submit(.nop) { finish($0) }
            }
            #expect(completion.result == 0)
            #expect(completion.error == nil)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func timeoutExpiresAfterItsDuration(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let (completion, elapsed): (IOCompletion, UInt64) = await onThread(thread) { finish in
                let start = ckeel_monotonic_ns()
                thread.submit(.timeout(.milliseconds(30))) { finish(($0, ckeel_monotonic_ns() - start)) }
            }
            #expect(completion.isTimeout)
            #expect(elapsed >= 29_000_000)
            #expect(elapsed < 2_000_000_000)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func cancelledTimeoutCompletesAsCancelled(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let (completion, elapsed): (IOCompletion, UInt64) = await onThread(thread) { finish in
                let start = ckeel_monotonic_ns()
                let id = thread.submit(.timeout(.seconds(30))) { finish(($0, ckeel_monotonic_ns() - start)) }
                thread.scheduleTimer(after: .milliseconds(5)) { thread.cancel(id) }
            }
            #expect(completion.isCancelled)
            #expect(elapsed < 5_000_000_000)
        }
    }

    /// Submits a 64-byte read on an empty pipe, runs `then` 10 ms later on the I/O thread (with the
    /// read's ID and the pipe's write end), and returns the read's completion and the bytes read.
    private func readFromEmptyPipe(
        _ backend: BackendKind, then: @escaping @Sendable (IOThread, OperationID, Int32) -> Void
    ) async throws -> (IOCompletion, [UInt8]) {
        let pipe = try Descriptors.pipe()
        defer {
            Descriptors.close(pipe.read)
            Descriptors.close(pipe.write)
        }
        return try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
            defer { storage.deallocate() }
            let address = UInt(bitPattern: storage.baseAddress)
            let completion: IOCompletion = await onThread(thread) { finish in
                let buffer = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: address), count: 64)
                let id = thread.submit(.read(pipe.read, into: buffer)) { finish($0) }
                thread.scheduleTimer(after: .milliseconds(10)) { then(thread, id, pipe.write) }
            }
            return (completion, Array(storage.prefix(max(0, Int(completion.result)))))
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func cancelledReadOnEmptyPipeCompletesAsCancelled(backend: BackendKind) async throws {
        let (completion, _) = try await readFromEmptyPipe(backend) { thread, id, _ in thread.cancel(id) }
        #expect(completion.isCancelled)
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func readCompletesWhenDataArrivesLater(backend: BackendKind) async throws {
        // The data arrives after the read is pending: epoll must wait for readiness.
        let (completion, bytes) = try await readFromEmptyPipe(backend) { thread, _, writeEnd in
            // The written bytes must outlive the operation: the completion frees them.
            let message = UnsafeMutableRawBufferPointer.allocate(byteCount: 11, alignment: 1)
            message.copyBytes(from: Array("hello, keel".utf8))
            thread.submit(.write(writeEnd, from: UnsafeRawBufferPointer(message))) { _ in message.deallocate() }
        }
        #expect(completion.result == 11)
        #expect(bytes == Array("hello, keel".utf8))
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func batchOfTenThousandOperationsCompletesExactlyOnce(backend: BackendKind) async throws {
        // A 64-entry ring forces the submission queue to fill and flush many times within one batch.
        try await withPool(backend, ringEntries: 64) { pool in
            let thread = pool.threads[0]
            let total = 10_000
            let seen: [Int] = await onThread(thread) { finish in
                let counts = ThreadConfined([Int](repeating: 0, count: total))
                var completed = 0
                for i in 0..<total {
                    thread.submit(.nop) { completion in
                        precondition(completion.result == 0)
                        counts.value[i] += 1
                        completed += 1
                        if completed == total { finish(counts.value) }
                    }
                }
            }
            #expect(seen.allSatisfy { $0 == 1 })
            #expect(seen.count == total)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func shutdownCancelsInFlightOperations(backend: BackendKind) async throws {
        let pipe = try Descriptors.pipe()
        let results = ThreadConfined<[IOCompletion]>([])
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        let address = UInt(bitPattern: storage.baseAddress)
        do {
            let pool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 2))
            let thread = pool.threads[1]
            let _: Bool = await onThread(thread) { finish in
                let buffer = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: address), count: 64)
                thread.submit(.timeout(.seconds(60))) { results.value.append($0) }
                thread.submit(.read(pipe.read, into: buffer)) { results.value.append($0) }
                thread.scheduleTimer(after: .seconds(60)) { Issue.record("timer survived shutdown") }
                finish(true)
            }
            pool.shutdown()
            pool.shutdown()  // idempotent
        }
        storage.deallocate()
        #expect(results.value.count == 2)
        #expect(results.value.allSatisfy { $0.isCancelled })
        Descriptors.close(pipe.read)
        Descriptors.close(pipe.write)
    }

    /// Every descriptor the pool's threads opened (rings or epoll instances, eventfds) is closed by the
    /// shutdown. Checked in a child process (an exit test), where no other test opens descriptors that
    /// could take a closed one's number meanwhile.
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func shutdownClosesEveryDescriptorThePoolOpened(backend: BackendKind) async {
        await #expect(processExitsWith: .success) { [name = backend.rawValue as String] in
            let pool = try IOPool(configuration: .init(threadCount: 2, backend: BackendKind(rawValue: name)!, workPoolThreadCount: 2))
            let owned = pool.threads.flatMap { $0.backendDescriptors }
            precondition(owned.count == 4 && owned.allSatisfy { fcntl($0, F_GETFD) >= 0 }, "a ring or epoll and an eventfd per thread")
            let kinds = Dictionary(uniqueKeysWithValues: owned.map { ($0, descriptorTarget($0)) })
            let thread = pool.threads[1]
            _ = try await thread.submit { thread.submit(.timeout(.seconds(60))) { _ in } }
            pool.shutdown()
            // Closed, or (rarely) reused meanwhile for something of another kind.
            let open = owned.filter { fcntl($0, F_GETFD) >= 0 && descriptorTarget($0) == kinds[$0] }
            precondition(open.isEmpty, "descriptors left open after shutdown: \(open.map { "\($0) → \(kinds[$0]!)" })")
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func theThreadKeepsAHandlerUntilItsOperationsFinalCompletion(backend: BackendKind) async throws {
        var fds: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        defer { fds.forEach { close($0) } }
        let reader = fds[0]
        // Seven bytes, then end of stream: a multishot receive delivers the bytes and ends with EOF.
        #expect(write(fds[1], "abc", 3) == 3 && write(fds[1], "defg", 4) == 4)
        shutdown(fds[1], Int32(SHUT_WR))
        let watch = WeakHandler()
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let (completions, bytes, releasedAfterFinal) = await onThread(thread) { finish in
                let handler = CountingHandler(thread: thread)
                watch.handler = handler
                handler.onFinal = { [unowned handler] in
                    let counts = (handler.completions, handler.bytes)
                    // The thread releases the handler once this completion returns: look on the next turn.
                    thread.schedule { finish((counts.0, counts.1, watch.handler == nil)) }
                }
                // After this, the operation table holds the only reference to the handler.
                thread.submit(.receivePooled(reader, multishot: true), handler: handler)
            }
            #expect(completions >= 2, "data, then the final end-of-stream completion")
            #expect(bytes == 7)
            #expect(releasedAfterFinal, "the handler is released after its operation's final completion")
        }
    }

    @Test func staleTokenForReusedSlotIsIgnored() {
        var table = OperationTable(initialCapacity: 2)
        defer { table.deallocate() }
        var handler = IOCompletionHandler()
        /// Removes `token`'s handler, releasing the table's retain. - Returns: whether it was there.
        func remove(_ token: Token) -> Bool {
            guard let removed = table.remove(token) else { return false }
            #expect(removed.retained)
            removed.handler.release()
            return true
        }
        let first = table.insert(handler)
        #expect(remove(first))
        let second = table.insert(handler)
        #expect(second.slot == first.slot)
        #expect(second.generation != first.generation)
        #expect(!remove(first), "a stale completion must not reach the slot's new owner")
        #expect(table.contains(second))
        #expect(table.lookup(second)?.takeUnretainedValue() === handler)
        #expect(remove(second))
        #expect(!remove(second), "a completion is delivered once")
        // Growth keeps outstanding tokens valid.
        let tokens = (0..<100).map { _ in table.insert(handler) }
        #expect(table.inFlight == 100)
        #expect(tokens.allSatisfy { remove($0) })
        #expect(table.inFlight == 0)
        // Every retain the table took was given back.
        #expect(isKnownUniquelyReferenced(&handler))
    }

    /// A handler its owner keeps alive (Keel's connections) goes in unretained: the table takes no
    /// reference, says so on removal, and releases nothing for it when deallocated.
    @Test func anUnretainedHandlerIsNeitherRetainedNorReleased() {
        var table = OperationTable(initialCapacity: 2)
        var handler = IOCompletionHandler()
        let token = table.insert(handler, retains: false)
        #expect(isKnownUniquelyReferenced(&handler))
        #expect(table.lookup(token)?.takeUnretainedValue() === handler)
        let removed = table.remove(token)
        #expect(removed?.retained == false)
        #expect(removed?.handler.takeUnretainedValue() === handler)
        for _ in 0..<5 { _ = table.insert(handler, retains: false) }
        _ = table.insert(handler)  // one retained, beside them
        #expect(!isKnownUniquelyReferenced(&handler))
        table.deallocate()
        #expect(isKnownUniquelyReferenced(&handler), "only the retained one was released")
    }

    @Test func deallocatingTheTableReleasesHandlersStillHeld() {
        var table = OperationTable(initialCapacity: 4)
        var handler = IOCompletionHandler()
        for _ in 0..<10 { _ = table.insert(handler) }
        #expect(!isKnownUniquelyReferenced(&handler))
        table.deallocate()
        #expect(isKnownUniquelyReferenced(&handler))
    }

    @Test func tokenPacksKindGenerationAndSlot() {
        let token = Token(kind: .callback, generation: 0xAB_CDEF, slot: 0xDEAD_BEEF)
        #expect(token.kind == .callback)
        #expect(token.generation == 0xAB_CDEF)
        #expect(token.slot == 0xDEAD_BEEF)
        #expect(Token(rawValue: 0).kind == nil)
    }
}

/// What `/proc/self/fd/FD` links to ("anon_inode:[eventfd]", "socket:[123]", ...).
func descriptorTarget(_ fd: Int32) -> String {
    var target = [CChar](repeating: 0, count: 128)
    let n = readlink("/proc/self/fd/\(fd)", &target, 127)
    return n > 0 ? String(decoding: target[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
}
