/// What the admin listener reports: the server, its buffer pools and each endpoint.
public struct ServerStatus: Sendable, Hashable {
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

    /// The status as a JSON object (what `/status.json` serves).
    public var json: String {
        var out = "{\"uptime_seconds\":\(uptimeSeconds),\"backend\":\(quoted(backend)),\"threads\":\(threads),"
        out += "\"config\":\(quoted(source)),\"buffer_pool\":\(bufferPool.json),\"endpoints\":["
        out += endpoints.map(\.json).joined(separator: ",")
        return out + "]}"
    }
}

/// One endpoint's limits and counters.
public struct EndpointStatus: Sendable, Hashable {
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
    /// Connections refused (limits, PROXY or TLS failures before opening; UDP: datagrams past the peer limit).
    public var refused: Int
    /// Messages and bytes.
    public var traffic: EndpointTraffic

    var json: String {
        "{\"name\":\(quoted(name)),\"transport\":\(quoted(transport)),\"plugin\":\(quoted(plugin)),"
            + "\"listen\":[\(listen.map(quoted).joined(separator: ","))],\"open\":\(open),\"max_connections\":\(maximumConnections),"
            + "\"accepted\":\(accepted),\"refused\":\(refused),\"messages_in\":\(traffic.messagesIn),"
            + "\"messages_out\":\(traffic.messagesOut),\"bytes_in\":\(traffic.bytesIn),\"bytes_out\":\(traffic.bytesOut),"
            + "\"drops\":\(traffic.drops),\"bad_messages\":\(traffic.badMessages)}"
    }
}

/// The buffer pools, summed over I/O threads.
public struct BufferPoolStatus: Sendable, Hashable {
    /// Buffers in use (by connections, queues and the kernel).
    public var inUse: Int
    /// Buffers lent to the kernel for receives.
    public var heldByKernel: Int
    /// Slab memory mapped.
    public var slabBytes: Int
    /// Acquisitions refused at the memory cap.
    public var failedAcquisitions: Int

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
