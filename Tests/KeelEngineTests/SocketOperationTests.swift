import CKeelLinux
import Glibc
import KeelBuffers
import KeelSystem
import Testing

@testable import KeelEngine
import KeelTestSupport

/// Socket operations through both backends: multishot accept, connect, pooled multishot receive, send.
@Suite("Socket operations", .serialized)
struct SocketOperationTests {
    final class Scenario: @unchecked Sendable {
        // @unchecked Sendable: touched only on the I/O thread driving the scenario.
        var listener: Int32 = -1
        var client: Int32 = -1
        var accepted: [Int32] = []
        var received: [UInt8] = []
        var acceptMore: [Bool] = []
        var receiveCompletions = 0
        var finished = false
        var receiveOperation: OperationID?
        var address = try! SocketAddress(host: "127.0.0.1", port: 0)
        let payload = Array("ping through the engine".utf8)
        var sendBuffer: UnsafeMutableRawBufferPointer
        init() {
            sendBuffer = .allocate(byteCount: 64, alignment: 8)
            sendBuffer.copyBytes(from: payload)
        }
        deinit { sendBuffer.deallocate() }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func acceptConnectReceivePooledAndSend(backend: BackendKind) async throws {
        var port: UInt16 = 0
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            let scenario = Scenario()
            let listener = try Sockets.makeStreamSocket(family: AF_INET)
            try Sockets.setReuseAddress(listener)
            try Sockets.bind(listener, to: scenario.address)
            try Sockets.listen(listener, backlog: 64)
            scenario.listener = listener
            scenario.address = try Sockets.localAddress(listener)
            port = scenario.address.port
            #expect(scenario.address.port != 0)
            scenario.client = try Sockets.makeStreamSocket(family: AF_INET)

            let outcome: String = await onThread(thread) { reply in
                let finish: (String) -> Void = { text in
                    if !scenario.finished {
                        scenario.finished = true
                        reply(text)
                    }
                }
                var acceptID: OperationID?
                acceptID = thread.submit(.accept(listener, multishot: true)) { completion in
                    scenario.acceptMore.append(completion.hasMore)
                    guard completion.result >= 0 else { return }
                    let fd = completion.result
                    scenario.accepted.append(fd)
                    scenario.receiveOperation = thread.submit(.receivePooled(fd, multishot: true)) { received in
                        scenario.receiveCompletions += 1
                        if let buffer = thread.takeReceivedBuffer(received) {
                            scenario.received += buffer.readableByteArray
                        }
                        if scenario.received.count == scenario.payload.count {
                            thread.cancel(acceptID!)
                            finish("ok")
                        } else if !received.hasMore {
                            finish("receive ended early: \(received)")
                        }
                    }
                }
                scenario.address.withSockAddr { sa, length in
                    let addressCopy = UnsafeMutableRawPointer.allocate(byteCount: Int(length), alignment: 8)
                    addressCopy.copyMemory(from: sa, byteCount: Int(length))
                    thread.submit(.connect(scenario.client, to: addressCopy, length: Int(length))) { connected in
                        addressCopy.deallocate()
                        guard connected.result == 0 else { return finish("connect failed: \(connected)") }
                        let bytes = UnsafeRawBufferPointer(rebasing: scenario.sendBuffer[0..<scenario.payload.count])
                        thread.submit(.send(scenario.client, from: bytes)) { sent in
                            if sent.result != Int32(scenario.payload.count) { finish("send: \(sent)") }
                        }
                    }
                }
            }
            #expect(outcome == "ok")
            // Read the results, then tear down, on the I/O thread that owns them: the accept's last
            // completion (after its cancellation) has no 'more' flag.
            let (received, accepted, acceptFlags, inUse): ([UInt8], Int, [Bool], Int) = await onThread(thread) { finish in
                if let receive = scenario.receiveOperation { thread.cancel(receive) }
                thread.scheduleTimer(after: .milliseconds(20)) {
                    let result = (scenario.received, scenario.accepted.count, scenario.acceptMore,
                                  thread.bufferPool.statistics.inUse)
                    for fd in scenario.accepted { close(fd) }
                    close(scenario.client)
                    close(listener)
                    finish(result)
                }
            }
            #expect(received == scenario.payload)
            #expect(accepted == 1)
            #expect(acceptFlags.first == true, "multishot accept stays armed")
            #expect(acceptFlags.last == false)
            #expect(inUse == 0, "received buffers went back to the pool")
        }
        #expect(openSockets(ports: [port]).isEmpty, "listener, client and accepted sockets are closed")
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func connectToAClosedPortIsRefused(backend: BackendKind) async throws {
        try await withPool(backend) { pool in
            let thread = pool.threads[0]
            // A port bound but not listening (connects are refused), kept so until the end so that
            // nothing running in parallel takes it.
            let probe = try Sockets.makeStreamSocket(family: AF_INET)
            defer { close(probe) }
            try Sockets.bind(probe, to: SocketAddress(host: "127.0.0.1", port: 0))
            let address = try Sockets.localAddress(probe)
            let client = try Sockets.makeStreamSocket(family: AF_INET)
            defer { close(client) }
            let result: Int32 = await onThread(thread) { finish in
                address.withSockAddr { sa, length in
                    let copy = UnsafeMutableRawPointer.allocate(byteCount: Int(length), alignment: 8)
                    copy.copyMemory(from: sa, byteCount: Int(length))
                    thread.submit(.connect(client, to: copy, length: Int(length))) { completion in
                        copy.deallocate()
                        finish(completion.result)
                    }
                }
            }
            #expect(result == -ECONNREFUSED)
        }
    }
}
