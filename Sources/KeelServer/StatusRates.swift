import Synchronization

/// One endpoint's per-second rates, computed by the server (see ``StatusRateWindow``).
public struct EndpointRates: Sendable, Hashable, Decodable {
    /// Messages received per second.
    public var messagesIn: Double = 0
    /// Messages sent per second.
    public var messagesOut: Double = 0
    /// Payload bytes received per second.
    public var bytesIn: Double = 0

    /// Creates rates.
    public init(messagesIn: Double = 0, messagesOut: Double = 0, bytesIn: Double = 0) {
        self.messagesIn = messagesIn
        self.messagesOut = messagesOut
        self.bytesIn = bytesIn
    }

    enum CodingKeys: String, CodingKey {
        case messagesIn = "messages_in", messagesOut = "messages_out", bytesIn = "bytes_in"
    }

    var json: String { "{\"messages_in\":\(messagesIn),\"messages_out\":\(messagesOut),\"bytes_in\":\(bytesIn)}" }
}

/// Turns counters into per-second rates over a window of one to two seconds of the server's own
/// clock, so a rate does not depend on how often, or how regularly, a reader polls (a page in a
/// background tab, a browser running on virtual time, two readers at once).
///
/// It keeps two samples: rates are taken against the older one, and the pair moves on once the newer
/// one is a second old. Before that, the older sample is the server's start (all counters zero).
final class StatusRateWindow: Sendable {
    private struct Sample {
        var seconds: Double
        var traffic: [String: EndpointTraffic]
    }

    private let samples = Mutex<(older: Sample, newer: Sample?)>((Sample(seconds: 0, traffic: [:]), nil))

    /// The shortest span the newer sample must cover before it becomes the baseline.
    static let minimumWindowSeconds = 1.0

    /// Fills in `status`'s endpoint rates and records its counters as a sample.
    func annotate(_ status: inout ServerStatus) {
        let now = status.uptimeSeconds
        let current = Sample(seconds: now, traffic: Dictionary(status.endpoints.map { ($0.name, $0.traffic) }) { first, _ in first })
        let baseline = samples.withLock { samples -> Sample in
            guard let newer = samples.newer else {
                samples.newer = current
                return samples.older
            }
            if now - newer.seconds >= Self.minimumWindowSeconds {
                samples.older = newer
                samples.newer = current
            }
            return samples.older
        }
        let span = max(now - baseline.seconds, 0.001)
        for index in status.endpoints.indices {
            let traffic = status.endpoints[index].traffic
            // An endpoint that appeared since (a reload) is measured from zero; counters never go back.
            let before = baseline.traffic[status.endpoints[index].name] ?? EndpointTraffic()
            func rate(_ now: Int, _ then: Int) -> Double { Double(max(now - then, 0)) / span }
            status.endpoints[index].rates = EndpointRates(
                messagesIn: rate(traffic.messagesIn, before.messagesIn),
                messagesOut: rate(traffic.messagesOut, before.messagesOut),
                bytesIn: rate(traffic.bytesIn, before.bytesIn))
        }
    }
}
