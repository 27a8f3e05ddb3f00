import KeelEngine
import KeelSystem
import Testing

import KeelTestSupport

@Suite("io_uring features")
struct IOUringFeaturesTests {
    @Test func namesParseAndPrint() {
        #expect(IOUringFeatures(names: "registered-ring") == .registeredRing)
        #expect(IOUringFeatures(names: "zero-copy-send, registered-ring") == .all)
        #expect(IOUringFeatures(names: "all") == .all)
        #expect(IOUringFeatures(names: "none") == [])
        #expect(IOUringFeatures(names: "") == [])
        #expect(IOUringFeatures(names: "registered-ring,bogus") == nil)
        #expect(IOUringFeatures.all.description == "registered-ring, zero-copy-send")
        #expect(IOUringFeatures().description == "none")
    }

    /// Each feature, turned off by configuration, is left out; what is left still runs a round trip.
    @Test(.enabled(if: IOUringSupport.isAvailable), arguments: [IOUringFeatures.all, [], .registeredRing, .zeroCopySend])
    func aPoolUsesOnlyTheFeaturesItWasGivenAndStillWorks(features: IOUringFeatures) async throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: .ioUring, workPoolThreadCount: 1, ioUringFeatures: features))
        defer { pool.shutdown() }
        // This kernel (6.18) has every feature; one that is turned off by KEEL_IO_URING_OFF is left out too.
        #expect(pool.ioUringFeatures == features.subtracting(IOUringFeatures.turnedOffByEnvironment))
        let result = await onThread(pool.threads[0]) { finish in
            _ = pool.threads[0].submit(.nop) { completion in finish(completion.result) }
        }
        #expect(result == 0)
    }

    @Test func epollUsesNone() throws {
        let pool = try IOPool(configuration: .init(threadCount: 1, backend: .epoll, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        #expect(pool.ioUringFeatures == [])
    }
}
