import HTTPTypes
import KeelEngine
import KeelHTTP
import KeelSockets
import KeelSystem
import Synchronization

/// What an admin listener reports: a ``ServerHost``, or a supervisor summing its workers.
public protocol AdminStatusSource: AnyObject, Sendable {
    /// Collects the status and calls `completion` with it on `thread` (now, or later after work
    /// elsewhere); nil when it is not available.
    func collectStatus(on thread: IOThread, _ completion: @escaping (ServerStatus?) -> Void)
    /// `status` in Prometheus's text format.
    func prometheusMetrics(for status: ServerStatus) -> [UInt8]
}

/// The admin listener: `/` the live status page, `/status.json` the counters it draws, `/metrics` for
/// Prometheus. No authentication: keep it on loopback or a private network.
public final class AdminListener: Sendable {
    private let server: TCPServer<HTTPOnlyConnection>
    private let source: SourceReference

    /// The source, once it exists (the listener may start before its source finishes starting).
    final class SourceReference: Sendable {
        private let reference = Locked<WeakSource>(WeakSource())
        struct WeakSource: @unchecked Sendable {
            // @unchecked Sendable: a weak reference to a Sendable object, read and written under the mutex.
            weak var source: (any AdminStatusSource)?
        }
        var source: (any AdminStatusSource)? { reference.withLock { $0.source } }
        func set(_ source: any AdminStatusSource) { reference.withLock { $0.source = source } }
    }

    /// Starts listening on `configuration`'s address; it answers 503 until ``attach(_:)``.
    public init(configuration: AdminConfiguration, pool: IOPool) throws {
        let source = SourceReference()
        self.source = source
        var options = TCPServerConfiguration(host: configuration.listen.host, port: configuration.listen.port)
        options.maximumConnections = 64
        options.connection.idleTimeout = .seconds(60)
        let rates = StatusRateWindow()
        options.connection.serveHTTP { AdminRequestHandler(source: source, rates: rates) }
        server = try TCPServer(pool: pool, configuration: options) { HTTPOnlyConnection() }
    }

    /// The bound address.
    public var address: SocketAddress { server.localAddress }

    /// Starts answering from `source` (held weakly).
    public func attach(_ source: any AdminStatusSource) { self.source.set(source) }

    /// Closes the listener and its connections.
    public func stop() async { await server.stop(closing: .abortive) }
}

/// Answers one admin connection's requests.
struct AdminRequestHandler: HTTPRequestHandler {
    let source: AdminListener.SourceReference
    /// Shared by the listener's connections: every reader sees rates over the same window.
    let rates: StatusRateWindow

    mutating func requestReceived(_ head: HTTPRequestHead, responder: HTTPResponder) {
        let path = head.request.path?.split(separator: "?", maxSplits: 1).first.map(String.init) ?? "/"
        guard head.request.method == .get || head.request.method == .head else {
            return responder.respond(.methodNotAllowed, fields: [.allow: "GET, HEAD"], body: Array("GET only\n".utf8))
        }
        switch path {
        case "/", "/index.html":
            responder.respond(.ok, fields: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
                              body: Array(StatusPage.html.utf8))
        case "/status.json", "/metrics":
            guard let source = source.source, let thread = IOThread.current else {
                return responder.respond(.serviceUnavailable, body: Array("starting\n".utf8))
            }
            source.collectStatus(on: thread) { [rates] status in
                guard var status else { return responder.respond(.serviceUnavailable, body: Array("status unavailable\n".utf8)) }
                if path == "/metrics" {
                    responder.respond(.ok, fields: [.contentType: "text/plain; version=0.0.4; charset=utf-8", .cacheControl: "no-store"],
                                      body: source.prometheusMetrics(for: status))
                } else {
                    rates.annotate(&status)
                    responder.respond(.ok, fields: [.contentType: "application/json", .cacheControl: "no-store"],
                                      body: Array(status.json.utf8))
                }
            }
        default:
            responder.respond(.notFound, fields: [.contentType: "text/plain"],
                              body: Array("not found: try /, /status.json or /metrics\n".utf8))
        }
    }
}

/// The live status page: it polls `/status.json` every second and draws the rates the server computed
/// for each endpoint with its own script (nothing is fetched from anywhere else).
enum StatusPage {
    static let html = """
    <!doctype html>
    <html lang="en"><head><meta charset="utf-8"><title>keel-server status</title>
    <style>
    body{font:14px system-ui,sans-serif;margin:24px;color:#1b1f24;background:#f6f8fa}
    h1{font-size:20px;margin:0 0 4px} .sub{color:#57606a;margin-bottom:16px}
    table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}
    th,td{padding:6px 10px;border-bottom:1px solid #eaeef2;text-align:right} th:nth-child(-n+4),td:nth-child(-n+4){text-align:left}
    th{background:#eaeef2;font-weight:600} canvas{vertical-align:middle}
    .pool{margin-top:16px}
    </style></head><body>
    <h1>keel-server</h1><div class="sub" id="summary">connecting…</div>
    <table><thead><tr><th>endpoint</th><th>transport</th><th>plugin</th><th>listen</th><th>open / limit</th>
    <th>accepted</th><th>refused</th><th>msg/s in</th><th>msg/s out</th><th>bytes/s in</th><th>drops</th><th>last 60 s</th></tr></thead>
    <tbody id="rows"></tbody></table>
    <div class="pool" id="pool"></div>
    <script>
    const history = {};
    function fmt(n){ if(n>=1e9) return (n/1e9).toFixed(1)+'G'; if(n>=1e6) return (n/1e6).toFixed(1)+'M'; if(n>=1e3) return (n/1e3).toFixed(1)+'k'; return String(Math.round(n)); }
    function draw(canvas, values){
      const c = canvas.getContext('2d'), w = canvas.width, h = canvas.height, max = Math.max(1, ...values);
      c.clearRect(0,0,w,h); c.strokeStyle = '#0969da'; c.lineWidth = 1.5; c.beginPath();
      values.forEach((v,i)=>{ const x = i*(w/59), y = h-1-(v/max)*(h-2); i ? c.lineTo(x,y) : c.moveTo(x,y); }); c.stroke();
    }
    async function poll(){
      try {
        const s = await (await fetch('/status.json', {cache:'no-store'})).json();
        document.getElementById('summary').textContent = `${s.backend}, ${s.threads} I/O threads, up ${Math.round(s.uptime_seconds)} s, config ${s.config}`;
        const rows = document.getElementById('rows');
        s.endpoints.forEach(e => {
          const rin = e.rates.messages_in, rout = e.rates.messages_out, bin = e.rates.bytes_in;
          (history[e.name] = history[e.name] || []).push(rin); if (history[e.name].length > 60) history[e.name].shift();
          let row = document.getElementById('ep-'+e.name);
          if (!row) { row = rows.insertRow(); row.id = 'ep-'+e.name; for (let k=0;k<12;k++) row.insertCell(); row.cells[11].innerHTML = '<canvas width="120" height="24"></canvas>'; }
          const cells = [e.name, e.transport, e.plugin, e.listen.join(' '), `${e.open} / ${fmt(e.max_connections)}`, fmt(e.accepted), fmt(e.refused), fmt(rin), fmt(rout), fmt(bin), fmt(e.drops)];
          cells.forEach((v,k)=>{ row.cells[k].textContent = v; });
          row.dataset.open = e.open; row.dataset.messagesIn = e.messages_in;
          draw(row.cells[11].firstChild, history[e.name]);
        });
        const b = s.buffer_pool;
        const lag = (s.loop_lag || []).map(l => `thread ${l.thread}: ${l.worst_ms.toFixed(1)} ms worst, ${l.mean_ms.toFixed(2)} ms mean`).join('; ');
        document.getElementById('pool').textContent = `buffer pool: ${b.in_use} buffers in use (${b.held_by_kernel} lent to the kernel), ${fmt(b.slab_bytes)}B mapped, ${b.failed_acquisitions} refused at the cap. Timer lag: ${lag}`;
      } catch (err) { document.getElementById('summary').textContent = 'status unavailable: ' + err; }
    }
    poll(); setInterval(poll, 1000);
    </script></body></html>
    """
}
