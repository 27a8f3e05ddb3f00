import CKeelLinux
import Glibc
import KeelBuffers
import Testing

@testable import KeelEngine
import KeelTestSupport

/// The epoll backend's level-triggered registrations: kept while they match what waits, removed when
/// readiness finds nothing waiting.
@Suite("epoll registrations")
struct EpollRegistrationTests {
    final class Scenario: @unchecked Sendable {
        // @unchecked Sendable: touched only on the I/O thread driving the scenario.
        var received = 0
        var receiveOperation: OperationID?
        var callsBeforeMessages = 0
        var callsForMessages = 0
        var eventsAfterCancel = 0
        var receivedAfterResuming = 0
    }

    private static func epoll(_ thread: IOThread) -> EpollBackend {
        guard case .epoll(let backend) = thread.backend else { fatalError("an epoll thread was asked for") }
        return backend
    }

    @Test(.timeLimit(.minutes(1)))
    func aReceiveThatStaysArmedMakesNoEpollCallPerMessageAndAnAbandonedDescriptorIsNotReportedAgain() async throws {
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | CKEEL_SOCK_NONBLOCK_CLOEXEC, 0, &pair) == 0)
        defer { close(pair[0]); close(pair[1]) }
        let (reader, writer) = (pair[0], pair[1])
        let messages = 50
        let scenario = Scenario()
        try await withPool(.epoll) { pool in
            let thread = pool.threads[0]
            let done: Bool = await onThread(thread) { finish in
                let epoll = Self.epoll(thread)
                let writeByte: @Sendable () -> Void = {
                    var byte: UInt8 = 7
                    _ = Glibc.write(writer, &byte, 1)
                }
                scenario.callsBeforeMessages = epoll.registrationCalls
                // One byte at a time, each written once the previous one arrived: a readiness event each.
                scenario.receiveOperation = thread.submit(.receivePooled(reader, multishot: true)) { completion in
                    guard let buffer = thread.takeReceivedBuffer(completion) else { return }
                    scenario.received += buffer.readableBytes
                    if scenario.received < messages { return writeByte() }
                    scenario.callsForMessages = epoll.registrationCalls - scenario.callsBeforeMessages
                    // Nothing waits on the reader any more, and it has bytes to read: level-triggered, it
                    // would be reported on every wait unless its registration goes.
                    thread.cancel(scenario.receiveOperation!)
                    for _ in 0..<5 { writeByte() }
                    let eventsAtCancel = epoll.readinessEvents
                    thread.scheduleTimer(after: .milliseconds(50)) {
                        scenario.eventsAfterCancel = epoll.readinessEvents - eventsAtCancel
                        // A new receive registers the descriptor again and finds the bytes left.
                        thread.submit(.receivePooled(reader, multishot: false)) { again in
                            if let buffer = thread.takeReceivedBuffer(again) { scenario.receivedAfterResuming = buffer.readableBytes }
                            finish(true)
                        }
                    }
                }
                writeByte()
            }
            #expect(done)
        }
        #expect(scenario.received == messages)
        #expect(scenario.callsForMessages <= 1, "registered once, not once per message (\(scenario.callsForMessages) epoll_ctl calls)")
        #expect(scenario.eventsAfterCancel <= 2, "reported \(scenario.eventsAfterCancel) times with nothing waiting")
        #expect(scenario.receivedAfterResuming == 5)
    }

    /// A handler that takes receives' buffers as handed over (``IOCompletionHandler/received(_:_:)``),
    /// counting which way each arrived.
    final class HandedOverReceiver: IOCompletionHandler, @unchecked Sendable {
        // @unchecked Sendable: touched only on the I/O thread driving the scenario.
        var handedOver = 0
        var bytes = 0
        var otherResults: [Int32] = []
        var bufferSize = 0
        var onHandedOver: () -> Void = {}
        var onOther: () -> Void = {}

        override func received(_ buffer: consuming IOBuffer, _ completion: IOCompletion) {
            handedOver += 1
            bytes += buffer.readableBytes
            onHandedOver()
        }

        override func complete(_ completion: IOCompletion) {
            otherResults.append(completion.result)
            onOther()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func readinessHandsBuffersStraightToTheHandlerAndStopsWhenTheHandlerCancelsMidBurst() async throws {
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | CKEEL_SOCK_NONBLOCK_CLOEXEC, 0, &pair) == 0)
        defer { close(pair[0]); close(pair[1]) }
        let (reader, writer) = (pair[0], pair[1])
        let receiver = HandedOverReceiver()
        try await withPool(.epoll) { pool in
            let thread = pool.threads[0]
            let done: Bool = await onThread(thread) { finish in
                receiver.bufferSize = thread.bufferPool.bufferSize
                // Armed before the bytes arrive, so readiness (not the first attempt) reads them: three
                // full buffers, a burst the handler cuts short after the first.
                let operation = thread.submit(.receivePooled(reader, multishot: true), handler: receiver)
                receiver.onHandedOver = { thread.cancel(operation) }
                receiver.onOther = { finish(true) }
                let bytes = [UInt8](repeating: 1, count: 3 * receiver.bufferSize)
                #expect(bytes.withUnsafeBytes { Glibc.write(writer, $0.baseAddress, $0.count) } == bytes.count)
            }
            #expect(done)
        }
        #expect(receiver.handedOver == 1, "nothing is handed over after the handler cancelled")
        #expect(receiver.bytes == receiver.bufferSize)
        #expect(receiver.otherResults == [-ECANCELED])
    }
}
