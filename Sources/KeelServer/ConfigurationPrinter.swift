extension ServerConfiguration {
    /// The configuration with every default filled in, as YAML that keel-server reads back to the same
    /// configuration (what `keel-server --check FILE` prints).
    public var resolvedYAML: String {
        var lines = ["# resolved from \(source)", "shutdown-deadline: \(format(shutdownDeadline))"]
        if !pluginLibraries.isEmpty { lines.append("plugin-libraries: [\(pluginLibraries.map(quoted).joined(separator: ", "))]") }
        lines.append("endpoints:")
        for endpoint in endpoints {
            lines.append("  - name: \(endpoint.name)")
            lines.append("    listen: [\(endpoint.listen.map { "\"\($0)\"" }.joined(separator: ", "))]")
            lines.append("    transport: \(endpoint.transport.rawValue)")
            if endpoint.transport.isFramedStream {
                lines.append("    framing: \(endpoint.framing.name)")
                if case .lengthPrefixed(let width) = endpoint.framing { lines.append("    length-prefix-bytes: \(width)") }
                if case .fixed(let size) = endpoint.framing { lines.append("    fixed-size: \(size)") }
            }
            lines.append("    plugin: \(endpoint.plugin)")
            if !endpoint.settings.values.isEmpty {
                lines.append("    settings:")
                for (key, value) in endpoint.settings.values.sorted(by: { $0.key < $1.key }) {
                    lines.append("      \(quoted(key)): \(quoted(value.text))")
                }
            }
            let limits = endpoint.limits
            lines.append("    limits:")
            lines.append("      max-connections: \(limits.maximumConnections)")
            if let rate = limits.acceptRate { lines.append("      accept-rate: \(rate)") }
            if let idle = limits.idleTimeout { lines.append("      idle-timeout: \(format(idle))") }
            if let read = limits.readTimeout { lines.append("      read-timeout: \(format(read))") }
            lines.append("      max-message-bytes: \(limits.maximumMessageBytes)")
            if endpoint.transport != .udp {
                let flow = endpoint.flowControl
                lines.append("    flow-control:")
                lines.append("      high-watermark: \(flow.highWatermark)")
                lines.append("      limit: \(flow.limit)")
                lines.append("      policy: \(flow.policy.rawValue)")
                lines.append("      pause-reading: \(flow.pausesReading)")
                switch endpoint.proxyProtocol {
                case .off: lines.append("    proxy-protocol: off")
                case .required: lines.append("    proxy-protocol: required")
                case .trusted(let ranges): lines.append("    proxy-protocol: { trusted: [\(ranges.map(quoted).joined(separator: ", "))] }")
                }
            }
            if let tls = endpoint.tls {
                lines.append("    tls:")
                lines.append("      certificate: \(quoted(tls.certificate))")
                lines.append("      key: \(quoted(tls.key))")
                if let ca = tls.clientCA { lines.append("      client-ca: \(quoted(ca))") }
                if !tls.alpn.isEmpty { lines.append("      alpn: [\(tls.alpn.map(quoted).joined(separator: ", "))]") }
            }
            if endpoint.transport == .ws || endpoint.transport == .wss {
                let ws = endpoint.webSocket
                lines.append("    websocket:")
                lines.append("      compression: \(ws.compression)")
                lines.append("      ping-interval: \(ws.pingInterval.map(format) ?? "off")")
                if !ws.allowedOrigins.isEmpty {
                    lines.append("      allowed-origins: [\(ws.allowedOrigins.map(quoted).joined(separator: ", "))]")
                }
            }
        }
        if let admin {
            lines.append("admin:")
            lines.append("  listen: \"\(admin.listen)\"")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private func format(_ duration: Duration) -> String {
        let milliseconds = duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
        return milliseconds % 1000 == 0 ? "\(milliseconds / 1000)s" : "\(milliseconds)ms"
    }
}
