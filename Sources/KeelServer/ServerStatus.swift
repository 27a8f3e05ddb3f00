/// What the admin listener reports: the server, its buffer pools and each endpoint. Decodable from
/// its ``json`` (a supervisor reads its workers' statuses that way).
public struct ServerStatus: Sendable, Hashable, Decodable {
    /// Seconds since the server started.
    public var uptimeSeconds: Double
    /// The I/O backend (io_uring or epoll).
    public var backend: String
    /// I/O threads.
    public var threads: Int
    /// The configuration's file (or `<default>`).
    public var source: String
    /// Each endpoint, in the configuration's order.
    public var endpoints: [EndpointStatus]
    /// The buffer pools, summed over threads.
    public var bufferPool: BufferPoolStatus
    /// How late each I/O thread's timers fire (of every worker, with `--workers`).
    public var loopLag: [ThreadLoopLag] = []

    enum CodingKeys: String, CodingKey {
        case uptimeSeconds = "uptime_seconds", backend, threads, source = "config", endpoints, bufferPool = "buffer_pool"
        case loopLag = "loop_lag"
    }

    public init(uptimeSeconds: Double, backend: String, threads: Int, source: String, endpoints: [EndpointStatus],
                bufferPool: BufferPoolStatus, loopLag: [ThreadLoopLag] = []) {
        self.uptimeSeconds = uptimeSeconds
        self.backend = backend
        self.threads = threads
        self.source = source
        self.endpoints = endpoints
        self.bufferPool = bufferPool
        self.loopLag = loopLag
    }

    public init(from decoder: any Decoder) throws {
        let values = try decoder.container(keyedBy: CodingKeys.self)
        uptimeSeconds = try values.decode(Double.self, forKey: .uptimeSeconds)
        backend = try values.decode(String.self, forKey: .backend)
        threads = try values.decode(Int.self, forKey: .threads)
        source = try values.decode(String.self, forKey: .source)
        endpoints = try values.decode([EndpointStatus].self, forKey: .endpoints)
        bufferPool = try values.decode(BufferPoolStatus.self, forKey: .bufferPool)
        loopLag = try values.decodeIfPresent([ThreadLoopLag].self, forKey: .loopLag) ?? []
    }

    /// The sum of several processes' statuses (workers sharing the same listeners): counters and
    /// threads add up, endpoints are matched by name, the uptime is the longest.
    public static func summing(_ statuses: [ServerStatus]) -> ServerStatus? {
        guard var total = statuses.first else { return nil }
        for status in statuses.dropFirst() {
            total.uptimeSeconds = max(total.uptimeSeconds, status.uptimeSeconds)
            total.threads += status.threads
            total.bufferPool.inUse += status.bufferPool.inUse
            total.bufferPool.heldByKernel += status.bufferPool.heldByKernel
            total.bufferPool.slabBytes += status.bufferPool.slabBytes
            total.bufferPool.failedAcquisitions += status.bufferPool.failedAcquisitions
            let offset = total.loopLag.count
            total.loopLag += status.loopLag.map { ThreadLoopLag(thread: $0.thread + offset, worstMilliseconds: $0.worstMilliseconds, meanMilliseconds: $0.meanMilliseconds) }
            for endpoint in status.endpoints {
                guard let index = total.endpoints.firstIndex(where: { $0.name == endpoint.name }) else {
                    total.endpoints.append(endpoint)
                    continue
                }
                total.endpoints[index].add(endpoint)
            }
        }
        return total
    }

    /// The status as a JSON object (what `/status.json` serves).
    public var json: String {
        var out = "{\"uptime_seconds\":\(uptimeSeconds),\"backend\":\(quoted(backend)),\"threads\":\(threads),"
        out += "\"config\":\(quoted(source)),\"buffer_pool\":\(bufferPool.json),\"endpoints\":["
        out += endpoints.map(\.json).joined(separator: ",")
        out += "],\"loop_lag\":[" + loopLag.map(\.json).joined(separator: ",")
        return out + "]}"
    }
}

/// One endpoint's limits and counters.
public struct EndpointStatus: Sendable, Hashable, Decodable {
    /// The endpoint's name.
    public var name: String
    /// Its transport.
    public var transport: String
    /// Its plugin.
    public var plugin: String
    /// Its bound addresses.
    public var listen: [String]
    /// Peers open now (connections, WebSockets, UDP peers).
    public var open: Int
    /// The connection limit.
    public var maximumConnections: Int
    /// Connections accepted (UDP: peers seen).
    public var accepted: Int
    /// Connections refused at the limits (UDP: datagrams past the peer limit).
    public var refused: Int
    /// Connections closed before they opened: a TLS handshake or a PROXY header that failed.
    public var failedBeforeOpening: Int = 0
    /// TLS handshakes in progress now (tls, wss).
    public var handshakesInProgress: Int = 0
    /// Messages and bytes.
    public var traffic: EndpointTraffic
    /// The flow-control policy that drops count against (`disconnect`, `drop-newest`, `drop-oldest`).
    public var flowPolicy: String = FlowControlPolicy.Policy.disconnect.rawValue
    /// Per-second rates, filled in by the admin listener (zero elsewhere).
    public var rates = EndpointRates()

    enum CodingKeys: String, CodingKey {
        case name, transport, plugin, listen, open, maximumConnections = "max_connections", accepted, refused
        case messagesIn = "messages_in", messagesOut = "messages_out", bytesIn = "bytes_in", bytesOut = "bytes_out"
        case drops, badMessages = "bad_messages", peersClosed = "closed", closeReasons = "close_reasons", flowPolicy = "flow_policy", pluginErrors = "plugin_errors"
        case failedBeforeOpening = "failed_before_opening", handshakesInProgress = "handshakes_in_progress"
        case rates
    }

    /// Creates an endpoint status.
    public init(name: String, transport: String, plugin: String, listen: [String], open: Int, maximumConnections: Int,
                accepted: Int, refused: Int, traffic: EndpointTraffic, flowPolicy: String = "disconnect",
                failedBeforeOpening: Int = 0, handshakesInProgress: Int = 0) {
        self.name = name
        self.transport = transport
        self.plugin = plugin
        self.listen = listen
        self.open = open
        self.maximumConnections = maximumConnections
        self.accepted = accepted
        self.refused = refused
        self.traffic = traffic
        self.flowPolicy = flowPolicy
        self.failedBeforeOpening = failedBeforeOpening
        self.handshakesInProgress = handshakesInProgress
    }

    public init(from decoder: any Decoder) throws {
        let values = try decoder.container(keyedBy: CodingKeys.self)
        name = try values.decode(String.self, forKey: .name)
        transport = try values.decode(String.self, forKey: .transport)
        plugin = try values.decode(String.self, forKey: .plugin)
        listen = try values.decode([String].self, forKey: .listen)
        open = try values.decode(Int.self, forKey: .open)
        maximumConnections = try values.decode(Int.self, forKey: .maximumConnections)
        accepted = try values.decode(Int.self, forKey: .accepted)
        refused = try values.decode(Int.self, forKey: .refused)
        traffic = EndpointTraffic(
            messagesIn: try values.decode(Int.self, forKey: .messagesIn), messagesOut: try values.decode(Int.self, forKey: .messagesOut),
            bytesIn: try values.decode(Int.self, forKey: .bytesIn), bytesOut: try values.decode(Int.self, forKey: .bytesOut),
            drops: try values.decode(Int.self, forKey: .drops), peersOpened: try values.decode(Int.self, forKey: .accepted),
            peersClosed: try values.decodeIfPresent(Int.self, forKey: .peersClosed) ?? 0,
            badMessages: try values.decode(Int.self, forKey: .badMessages))
        traffic.closeReasons = try values.decodeIfPresent([String: Int].self, forKey: .closeReasons) ?? [:]
        flowPolicy = try values.decodeIfPresent(String.self, forKey: .flowPolicy) ?? flowPolicy
        traffic.pluginErrors = try values.decodeIfPresent(Int.self, forKey: .pluginErrors) ?? 0
        failedBeforeOpening = try values.decodeIfPresent(Int.self, forKey: .failedBeforeOpening) ?? 0
        handshakesInProgress = try values.decodeIfPresent(Int.self, forKey: .handshakesInProgress) ?? 0
        rates = try values.decodeIfPresent(EndpointRates.self, forKey: .rates) ?? rates
    }

    /// Adds another process's counters for the same endpoint.
    mutating func add(_ other: EndpointStatus) {
        open += other.open
        maximumConnections += other.maximumConnections
        accepted += other.accepted
        refused += other.refused
        failedBeforeOpening += other.failedBeforeOpening
        handshakesInProgress += other.handshakesInProgress
        traffic.messagesIn += other.traffic.messagesIn
        traffic.messagesOut += other.traffic.messagesOut
        traffic.bytesIn += other.traffic.bytesIn
        traffic.bytesOut += other.traffic.bytesOut
        traffic.drops += other.traffic.drops
        traffic.peersOpened += other.traffic.peersOpened
        traffic.peersClosed += other.traffic.peersClosed
        traffic.badMessages += other.traffic.badMessages
        traffic.pluginErrors += other.traffic.pluginErrors
        traffic.closeReasons.merge(other.traffic.closeReasons) { $0 + $1 }
        rates.messagesIn += other.rates.messagesIn
        rates.messagesOut += other.rates.messagesOut
        rates.bytesIn += other.rates.bytesIn
    }

    var json: String {
        "{\"name\":\(quoted(name)),\"transport\":\(quoted(transport)),\"plugin\":\(quoted(plugin)),"
            + "\"listen\":[\(listen.map(quoted).joined(separator: ","))],\"open\":\(open),\"max_connections\":\(maximumConnections),"
            + "\"accepted\":\(accepted),\"refused\":\(refused),\"failed_before_opening\":\(failedBeforeOpening),"
            + "\"handshakes_in_progress\":\(handshakesInProgress),\"messages_in\":\(traffic.messagesIn),"
            + "\"messages_out\":\(traffic.messagesOut),\"bytes_in\":\(traffic.bytesIn),\"bytes_out\":\(traffic.bytesOut),"
            + "\"drops\":\(traffic.drops),\"flow_policy\":\(quoted(flowPolicy)),\"bad_messages\":\(traffic.badMessages),\"plugin_errors\":\(traffic.pluginErrors),\"closed\":\(traffic.peersClosed),"
            + "\"rates\":\(rates.json),"
            + "\"close_reasons\":{\(traffic.closeReasons.sorted { $0.key < $1.key }.map { "\(quoted($0.key)):\($0.value)" }.joined(separator: ","))}}"
    }
}

/// How late one I/O thread's timers fire: its loop's responsiveness.
public struct ThreadLoopLag: Sendable, Hashable, Decodable {
    /// The thread's index (workers' threads follow each other).
    public var thread: Int
    /// The worst lateness since the previous status, in milliseconds.
    public var worstMilliseconds: Double
    /// The mean lateness since start, in milliseconds.
    public var meanMilliseconds: Double

    enum CodingKeys: String, CodingKey {
        case thread, worstMilliseconds = "worst_ms", meanMilliseconds = "mean_ms"
    }

    var json: String { "{\"thread\":\(thread),\"worst_ms\":\(worstMilliseconds),\"mean_ms\":\(meanMilliseconds)}" }
}

/// The buffer pools, summed over I/O threads.
public struct BufferPoolStatus: Sendable, Hashable, Decodable {
    /// Buffers in use (by connections, queues and the kernel).
    public var inUse: Int
    /// Buffers lent to the kernel for receives.
    public var heldByKernel: Int
    /// Slab memory mapped.
    public var slabBytes: Int
    /// Acquisitions refused at the memory cap.
    public var failedAcquisitions: Int

    enum CodingKeys: String, CodingKey {
        case inUse = "in_use", heldByKernel = "held_by_kernel", slabBytes = "slab_bytes", failedAcquisitions = "failed_acquisitions"
    }

    var json: String {
        "{\"in_use\":\(inUse),\"held_by_kernel\":\(heldByKernel),\"slab_bytes\":\(slabBytes),\"failed_acquisitions\":\(failedAcquisitions)}"
    }
}

/// A JSON string literal.
func quoted(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}
