import KeelEngine
import KeelSystem
import Testing

import KeelTestSupport

@Suite("Kernel features")
struct KernelFeaturesTests {
    @Test func namesParseAndPrint() {
        #expect(KernelFeatures(names: "registered-ring") == .registeredRing)
        #expect(KernelFeatures(names: "zero-copy-send, registered-ring,udp-gso,udp-gro,registered-files,receive-bundles,registered-buffers,direct-descriptors") == .all)
        #expect(KernelFeatures(names: "all") == .all)
        #expect(KernelFeatures(names: "none") == [])
        #expect(KernelFeatures(names: "") == [])
        #expect(KernelFeatures(names: "registered-ring,bogus") == nil)
        #expect(KernelFeatures.all.description == "registered-ring, registered-files, direct-descriptors, receive-bundles, zero-copy-send, registered-buffers, udp-gso, udp-gro")
        #expect(KernelFeatures().description == "none")
    }

    /// Each feature, turned off by configuration, is left out; what is left still runs a round trip.
    @Test(.enabled(if: IOUringSupport.isAvailable), arguments: [KernelFeatures.all, [], .registeredRing, .registeredFiles, [.registeredFiles, .directDescriptors], .directDescriptors, .receiveBundles, .zeroCopySend, [.zeroCopySend, .registeredBuffers], .udpSegmentation, .udpReceiveCoalescing])
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

    @Test func epollUsesOnlyTheSocketFeatures() throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: .epoll, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        #expect(pool.kernelFeatures == KernelFeatures.socketFeatures.subtracting(KernelFeatures.turnedOffByEnvironment))
    }
}
