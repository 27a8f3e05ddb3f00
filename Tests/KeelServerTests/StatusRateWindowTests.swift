@testable import KeelServer
import Testing

/// The admin listener's rates, in memory: the window is the server's clock, not the reader's.
@Suite("Status rates")
struct StatusRateWindowTests {
    func status(at seconds: Double, messagesIn: Int, endpoint: String = "echo") -> ServerStatus {
        let traffic = EndpointTraffic(messagesIn: messagesIn, messagesOut: messagesIn, bytesIn: messagesIn * 10)
        let endpoint = EndpointStatus(name: endpoint, transport: "tcp", plugin: "echo", listen: [], open: 1, maximumConnections: 10,
                                      accepted: 1, refused: 0, traffic: traffic)
        return ServerStatus(uptimeSeconds: seconds, backend: "epoll", threads: 1, source: "<test>", endpoints: [endpoint],
                            bufferPool: BufferPoolStatus(inUse: 0, heldByKernel: 0, slabBytes: 0, failedAcquisitions: 0))
    }

    func rates(_ window: StatusRateWindow, _ status: ServerStatus) -> EndpointRates {
        var status = status
        window.annotate(&status)
        return status.endpoints[0].rates
    }

    @Test func theFirstReadingIsTheRateSinceStart() {
        let window = StatusRateWindow()
        #expect(rates(window, status(at: 4, messagesIn: 400)) == EndpointRates(messagesIn: 100, messagesOut: 100, bytesIn: 1000))
    }

    @Test func readingsMillisecondsApartKeepAWindowOfAtLeastASecond() {
        let window = StatusRateWindow()
        _ = rates(window, status(at: 10, messagesIn: 1000))
        // Nothing arrived in the last 2 ms (a stalled sender, a browser on virtual time): the rate still
        // covers the time since start, not the last 2 ms.
        #expect(rates(window, status(at: 10.002, messagesIn: 1000)).messagesIn == 1000 / 10.002)
        // A second on, the window moves to the first reading.
        #expect(rates(window, status(at: 11, messagesIn: 1500)).messagesIn == 500)
        #expect(rates(window, status(at: 11.5, messagesIn: 1600)).messagesIn == 600 / 1.5)
        #expect(abs(rates(window, status(at: 12.1, messagesIn: 1610)).messagesIn - 100) < 1e-9)
    }

    @Test func anEndpointAddedByAReloadIsMeasuredFromZeroAndCountersNeverGoBack() {
        let window = StatusRateWindow()
        _ = rates(window, status(at: 1, messagesIn: 100))
        _ = rates(window, status(at: 2, messagesIn: 200))
        // The window moved to the reading at 2 s, which had no "new" endpoint.
        #expect(rates(window, status(at: 3, messagesIn: 50, endpoint: "new")).messagesIn == 50)
        #expect(rates(window, status(at: 3.5, messagesIn: 10)).messagesIn == 0)
    }
}
