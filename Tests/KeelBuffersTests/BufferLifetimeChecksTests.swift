import KeelBuffers
import Testing

#if DEBUG
/// Debug builds trap a double release, or the reuse, of a pooled buffer at the moment it happens
/// (copyable `DetachedBuffer`s, used by the connection layer's queues, make both possible).
@Suite("Pooled buffer lifetime checks (debug builds)")
struct BufferLifetimeChecksTests {
    @Test func aDoubleReleaseTraps() async {
        await #expect(processExitsWith: .failure) {
            let pool = BufferPool()
            let detached = try! pool.acquire().detach()
            detached.release()
            detached.release()
        }
    }

    @Test func reattachingAReleasedBufferTraps() async {
        await #expect(processExitsWith: .failure) {
            let pool = BufferPool()
            let detached = try! pool.acquire().detach()
            detached.release()
            _ = detached.reattach()
        }
    }

    @Test func aBufferReleasedOnceIsFine() {
        let pool = BufferPool()
        let detached = try! pool.acquire().detach()
        var buffer = detached.reattach()
        buffer.append(contentsOf: [1, 2, 3])
        _ = consume buffer
        #expect(pool.statistics.inUse == 0)
    }
}
#endif
