import KeelSystem
import CoreMetrics
import Prometheus
import Synchronization

/// Publishes keel-server's counters through swift-metrics to any `MetricsFactory` (keel-server's is
/// Prometheus). Keel's layers count in per-thread counters that cost a plain store on the hot path;
/// the publisher reads them when asked (before each `/metrics` scrape) and moves the metrics by the
/// difference since the last time, so collecting metrics adds nothing per message.
public final class MetricsPublisher: Sendable {
    private let factory: any MetricsFactory
    private let state = Locked(Published())

    /// The metrics made so far, and the last totals published for each counter.
    private struct Published: @unchecked Sendable {
        // @unchecked Sendable: swift-metrics' Counter and Gauge are thread-safe handles; the struct is
        // only touched under the publisher's mutex.
        var counters: [String: (counter: CoreMetrics.Counter, last: Int64)] = [:]
        var gauges: [String: CoreMetrics.Gauge] = [:]
    }

    /// A publisher to `factory`.
    public init(factory: any MetricsFactory) {
        self.factory = factory
    }

    /// Publishes a snapshot of the server's counters.
    public func publish(_ status: ServerStatus) {
        state.withLock { published in
            func total(_ name: String, _ value: Int, _ dimensions: [(String, String)]) {
                let key = name + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
                var entry = published.counters[key] ?? (CoreMetrics.Counter(label: name, dimensions: dimensions, factory: factory), 0)
                let value = Int64(value)
                if value > entry.last { entry.counter.increment(by: value - entry.last) }
                entry.last = max(entry.last, value)
                published.counters[key] = entry
            }
            func level(_ name: String, _ value: Double, _ dimensions: [(String, String)]) {
                let key = name + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
                let gauge = published.gauges[key] ?? CoreMetrics.Gauge(label: name, dimensions: dimensions, factory: factory)
                gauge.record(value)
                published.gauges[key] = gauge
            }
            level("keel_uptime_seconds", status.uptimeSeconds, [])
            level("keel_io_threads", Double(status.threads), [("backend", status.backend)])
            level("keel_buffer_pool_buffers_in_use", Double(status.bufferPool.inUse), [])
            level("keel_buffer_pool_buffers_held_by_kernel", Double(status.bufferPool.heldByKernel), [])
            level("keel_buffer_pool_slab_bytes", Double(status.bufferPool.slabBytes), [])
            total("keel_buffer_pool_exhausted_total", status.bufferPool.failedAcquisitions, [])
            for lag in status.loopLag {
                level("keel_io_thread_lag_worst_seconds", lag.worstMilliseconds / 1000, [("thread", "\(lag.thread)")])
                level("keel_io_thread_lag_mean_seconds", lag.meanMilliseconds / 1000, [("thread", "\(lag.thread)")])
            }
            for endpoint in status.endpoints {
                let labels = [("endpoint", endpoint.name), ("transport", endpoint.transport)]
                level("keel_connections_open", Double(endpoint.open), labels)
                level("keel_connections_limit", Double(endpoint.maximumConnections), labels)
                total("keel_connections_accepted_total", endpoint.accepted, labels)
                total("keel_connections_refused_total", endpoint.refused, labels)
                total("keel_connections_failed_before_open_total", endpoint.failedBeforeOpening, labels)
                if endpoint.transport == "tls" || endpoint.transport == "wss" {
                    level("keel_tls_handshakes_in_progress", Double(endpoint.handshakesInProgress), labels)
                }
                for (reason, count) in endpoint.traffic.closeReasons {
                    total("keel_connections_closed_total", count, labels + [("reason", reason)])
                }
                total("keel_messages_received_total", endpoint.traffic.messagesIn, labels)
                total("keel_messages_sent_total", endpoint.traffic.messagesOut, labels)
                total("keel_bytes_received_total", endpoint.traffic.bytesIn, labels)
                total("keel_bytes_sent_total", endpoint.traffic.bytesOut, labels)
                total("keel_messages_dropped_total", endpoint.traffic.drops, labels + [("policy", endpoint.flowPolicy)])
                total("keel_bad_messages_total", endpoint.traffic.badMessages, labels)
                total("keel_plugin_errors_total", endpoint.traffic.pluginErrors, labels)
            }
        }
    }
}

/// A Prometheus registry fed by a ``MetricsPublisher``: renders a status as `/metrics` text.
public final class PrometheusExporter: Sendable {
    private let registry = PrometheusCollectorRegistry()
    private let publisher: MetricsPublisher

    /// An exporter with its own registry.
    public init() {
        publisher = MetricsPublisher(factory: PrometheusMetricsFactory(registry: registry))
    }

    /// Publishes `status`, then renders every metric in Prometheus's text format.
    public func render(_ status: ServerStatus) -> [UInt8] {
        publisher.publish(status)
        return registry.emitToBuffer()
    }
}
