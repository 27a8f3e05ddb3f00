import KeelEngine
import KeelSystem
import Testing

import KeelTestSupport

@Suite("Kernel features")
struct KernelFeaturesTests {
    @Test func namesParseAndPrint() {
        #expect(KernelFeatures(names: "registered-ring") == .registeredRing)
        #expect(KernelFeatures(names: "zero-copy-send, registered-ring,udp-gso,udp-gro,registered-files,receive-bundles,registered-buffers,direct-descriptors,cqe-skip") == .all)
        #expect(KernelFeatures(names: "all") == .all)
        #expect(KernelFeatures(names: "none") == [])
        #expect(KernelFeatures(names: "") == [])
        #expect(KernelFeatures(names: "registered-ring,bogus") == nil)
        #expect(KernelFeatures.all.description == "registered-ring, registered-files, direct-descriptors, receive-bundles, zero-copy-send, registered-buffers, cqe-skip, udp-gso, udp-gro")
        #expect(KernelFeatures().description == "none")
    }

    /// Each feature, turned off by configuration, is left out; what is left still runs a round trip.
    @Test(.enabled(if: IOUringSupport.isAvailable), arguments: [KernelFeatures.all, [], .registeredRing, .registeredFiles, [.registeredFiles, .directDescriptors], .directDescriptors, .receiveBundles, .zeroCopySend, [.zeroCopySend, .registeredBuffers], .completionSkipping, .udpSegmentation, .udpReceiveCoalescing])
    func aPoolUsesOnlyTheFeaturesItWasGivenAndStillWorks(features: KernelFeatures) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: .ioUring, workPoolThreadCount: 1, kernelFeatures: features))
        defer { pool.shutdown() }
        // This kernel (6.18) has every feature; one that is turned off by KEEL_FEATURES_OFF is left out too,
        // and registered buffers serve only zero-copy sends.
        var expected = features.subtracting(KernelFeatures.turnedOffByEnvironment)
        if !expected.contains(.zeroCopySend) { expected.remove(.registeredBuffers) }
        if !expected.contains(.registeredFiles) { expected.remove(.directDescriptors) }  // slots of that table
        #expect(pool.kernelFeatures == expected)
        let result = await onThread(pool.threads[0]) { finish in
            _ = pool.threads[0].submit(.nop) { completion in finish(completion.result) }
        }
        #expect(result == 0)
    }

    /// With ``KernelFeatures/completionSkipping``, a close through the ring that succeeds posts no
    /// completion and one that fails still posts one; without it, every close posts one.
    @Test(.enabled(if: IOUringSupport.isAvailable), arguments: [true, false])
    func closesThatSucceedPostNoCompletionWhereCompletionsAreSkipped(skipping: Bool) async throws {
        let features = skipping ? KernelFeatures.all : KernelFeatures.all.subtracting(.completionSkipping)
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: .ioUring, workPoolThreadCount: 1, kernelFeatures: features))
        defer { pool.shutdown() }
        let thread = pool.threads[0]
        let skips = pool.kernelFeatures.contains(.completionSkipping)
        #expect(skips == (skipping && !KernelFeatures.turnedOffByEnvironment.contains(.completionSkipping)))
        let descriptors = try (0..<10).map { _ in try Descriptors.eventFD() }
        let before: Int = await onThread(thread) { finish in
            let before = thread.ignoredCompletionCount
            for fd in descriptors { thread.closeDescriptor(fd) }
            thread.closeDescriptor(1_000_000)  // above the descriptor limit, so never open: this close fails
            _ = thread.submit(.nop) { _ in finish(before) }
        }
        let expected = skips ? 1 : descriptors.count + 1
        var reaped = 0
        for _ in 0..<200 {  // a close the kernel finished off the submitting thread may come later
            reaped = await onThread(thread) { finish in finish(thread.ignoredCompletionCount - before) }
            if reaped >= expected { break }
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(reaped == expected)
        reaped = await onThread(thread) { finish in
            _ = thread.submit(.nop) { _ in finish(thread.ignoredCompletionCount - before) }
        }
        #expect(reaped == expected, "and no more after another round trip")
    }

    @Test func epollUsesOnlyTheSocketFeatures() throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: .epoll, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        #expect(pool.kernelFeatures == KernelFeatures.socketFeatures.subtracting(KernelFeatures.turnedOffByEnvironment))
    }
}
