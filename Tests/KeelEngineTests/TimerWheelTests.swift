import Testing

@testable import KeelEngine

/// The wheel on a manual clock: deterministic, no threads.
@Suite("Timer wheel")
struct TimerWheelTests {
    final class Log {
        var fired: [Int] = []
    }

    static let ms: UInt64 = 1_000_000
    static let start: UInt64 = 1_000_000 * ms  // an arbitrary monotonic instant

    @Test func firesInDeadlineOrderAndNeverEarly() {
        var wheel = TimerWheel(nowNanoseconds: Self.start)
        defer { wheel.deallocate() }
        let log = Log()
        let delays: [UInt64] = [50, 3, 3, 4095, 4096, 4097, 10_000, 1, 700]
        for (i, delay) in delays.enumerated() {
            _ = wheel.schedule(nowNanoseconds: Self.start, delay: delay * Self.ms, interval: nil) { log.fired.append(i) }
        }
        var now = Self.start
        var firedAt: [Int: UInt64] = [:]
        while now <= Self.start + 10_001 * Self.ms {
            let before = log.fired.count
            wheel.fireExpired(nowNanoseconds: now)
            for i in log.fired[before...] { firedAt[i] = now }
            now += Self.ms / 2
        }
        let expectedOrder = delays.enumerated().sorted { ($0.element, $0.offset) < ($1.element, $1.offset) }.map(\.offset)
        #expect(log.fired == expectedOrder)
        for (i, delay) in delays.enumerated() {
            let at = firedAt[i]!
            #expect(at >= Self.start + delay * Self.ms, "timer \(i) fired early")
            #expect(at <= Self.start + (delay + 1) * Self.ms, "timer \(i) fired more than 1 ms late")
        }
        #expect(wheel.count == 0)
    }

    @Test func cancelledTimersNeverFireAndStaleHandlesAreIgnored() {
        var wheel = TimerWheel(nowNanoseconds: Self.start)
        defer { wheel.deallocate() }
        let log = Log()
        let a = wheel.schedule(nowNanoseconds: Self.start, delay: 10 * Self.ms, interval: nil) { log.fired.append(1) }
        let b = wheel.schedule(nowNanoseconds: Self.start, delay: 10 * Self.ms, interval: nil) { log.fired.append(2) }
        let result1 = wheel.cancel(a)
        #expect(result1)
        let result2 = wheel.cancel(a)
        #expect(!result2, "cancelling twice is a no-op")
        wheel.fireExpired(nowNanoseconds: Self.start + 20 * Self.ms)
        #expect(log.fired == [2])
        let result3 = wheel.cancel(b)
        #expect(!result3, "a fired one-shot timer's handle is stale")
        // The slot of `a` is reused; the old handle must not touch the new timer.
        let c = wheel.schedule(nowNanoseconds: Self.start + 20 * Self.ms, delay: Self.ms, interval: nil) { log.fired.append(3) }
        let result4 = wheel.cancel(a)
        #expect(!result4)
        #expect(wheel.isPending(c))
        wheel.fireExpired(nowNanoseconds: Self.start + 30 * Self.ms)
        #expect(log.fired == [2, 3])
    }

    @Test func resetMovesTheDeadline() {
        var wheel = TimerWheel(nowNanoseconds: Self.start)
        defer { wheel.deallocate() }
        let log = Log()
        let t = wheel.schedule(nowNanoseconds: Self.start, delay: 10 * Self.ms, interval: nil) { log.fired.append(1) }
        // Reset before it fires (as an idle timeout on every read): pushes it later.
        let result5 = wheel.reset(t, nowNanoseconds: Self.start + 9 * Self.ms, delay: 10 * Self.ms)
        #expect(result5)
        wheel.fireExpired(nowNanoseconds: Self.start + 18 * Self.ms)
        #expect(log.fired.isEmpty)
        wheel.fireExpired(nowNanoseconds: Self.start + 19 * Self.ms)
        #expect(log.fired == [1])
        let result6 = wheel.reset(t, nowNanoseconds: Self.start + 20 * Self.ms, delay: Self.ms)
        #expect(!result6, "fired timers cannot be reset")
        // Reset earlier works too.
        let u = wheel.schedule(nowNanoseconds: Self.start + 20 * Self.ms, delay: 5_000 * Self.ms, interval: nil) { log.fired.append(2) }
        let result7 = wheel.reset(u, nowNanoseconds: Self.start + 20 * Self.ms, delay: 2 * Self.ms)
        #expect(result7)
        wheel.fireExpired(nowNanoseconds: Self.start + 22 * Self.ms)
        #expect(log.fired == [1, 2])
    }

    @Test func repeatingTimerFiresEveryIntervalUntilCancelled() {
        var wheel = TimerWheel(nowNanoseconds: Self.start)
        defer { wheel.deallocate() }
        let log = Log()
        var handle: TimerHandle?
        var now = Self.start
        handle = wheel.schedule(nowNanoseconds: now, delay: 5 * Self.ms, interval: 5 * Self.ms) {
            log.fired.append(Int((now - Self.start) / Self.ms))
        }
        while now < Self.start + 27 * Self.ms {
            now += Self.ms
            wheel.fireExpired(nowNanoseconds: now)
        }
        #expect(log.fired == [5, 10, 15, 20, 25])
        let result8 = wheel.cancel(handle!)
        #expect(result8)
        now += 100 * Self.ms
        wheel.fireExpired(nowNanoseconds: now)
        #expect(log.fired.count == 5)
    }

    @Test func callbacksMaySetAndCancelTimersWhileFiring() {
        var wheel = TimerWheel(nowNanoseconds: Self.start)
        defer { wheel.deallocate() }
        let log = Log()
        let wheelBox = UnsafeMutablePointer<TimerWheel>.allocate(capacity: 1)
        wheelBox.initialize(to: wheel)
        defer { wheelBox.deallocate() }
        var second: TimerHandle?
        _ = wheelBox.pointee.schedule(nowNanoseconds: Self.start, delay: Self.ms, interval: nil) {
            log.fired.append(1)
            _ = wheelBox.pointee.cancel(second!)  // cancels a timer due in the same batch
            _ = wheelBox.pointee.schedule(nowNanoseconds: Self.start + Self.ms, delay: 0, interval: nil) { log.fired.append(3) }
        }
        second = wheelBox.pointee.schedule(nowNanoseconds: Self.start, delay: Self.ms, interval: nil) { log.fired.append(2) }
        wheelBox.pointee.fireExpired(nowNanoseconds: Self.start + Self.ms)
        #expect(log.fired == [1])
        wheelBox.pointee.fireExpired(nowNanoseconds: Self.start + 2 * Self.ms)
        #expect(log.fired == [1, 3])
        wheel = wheelBox.move()
    }

    @Test func oneHundredThousandTimersFireInOrderAndSetCancelStaysCheap() {
        var wheel = TimerWheel(nowNanoseconds: Self.start)
        defer { wheel.deallocate() }
        let count = 100_000
        var generator = SystemRandomNumberGenerator()
        let log = Log()
        log.fired.reserveCapacity(count)
        var deadlines: [UInt64] = []
        for i in 0..<count {
            let delay = UInt64.random(in: 1...20_000, using: &generator)
            deadlines.append(delay)
            _ = wheel.schedule(nowNanoseconds: Self.start, delay: delay * Self.ms, interval: nil) { log.fired.append(i) }
        }
        #expect(wheel.count == count)
        // Setting and cancelling with 100k pending timers stays O(1).
        for _ in 0..<10_000 {
            let h = wheel.schedule(nowNanoseconds: Self.start, delay: 7 * Self.ms, interval: nil) {}
            let result9 = wheel.cancel(h)
            #expect(result9)
        }
        // The next deadline is found without scanning the timers.
        #expect(wheel.nanosecondsUntilNextTimer(nowNanoseconds: Self.start)! <= deadlines.min()! * Self.ms)
        var now = Self.start
        while wheel.count > 0 {
            now += 7 * Self.ms
            wheel.fireExpired(nowNanoseconds: now)
        }
        #expect(log.fired.count == count)
        // Fired in non-decreasing deadline order (ties by insertion order within a tick).
        let firedDeadlines = log.fired.map { deadlines[$0] }
        #expect(zip(firedDeadlines, firedDeadlines.dropFirst()).allSatisfy { $0 <= $1 })
    }

    @Test func nextDeadlineIsNilWhenIdleAndZeroWhenDue() {
        var wheel = TimerWheel(nowNanoseconds: Self.start)
        defer { wheel.deallocate() }
        #expect(wheel.nanosecondsUntilNextTimer(nowNanoseconds: Self.start) == nil)
        _ = wheel.schedule(nowNanoseconds: Self.start, delay: 3 * Self.ms, interval: nil) {}
        #expect(wheel.nanosecondsUntilNextTimer(nowNanoseconds: Self.start) == 3 * Self.ms)
        #expect(wheel.nanosecondsUntilNextTimer(nowNanoseconds: Self.start + 5 * Self.ms) == 0)
    }
}
