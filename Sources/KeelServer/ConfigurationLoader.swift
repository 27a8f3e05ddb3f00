import Glibc
import KeelProxyProtocol
import Yams

/// Reads keel-server's YAML configuration into a ``ServerConfiguration``, checking everything it can
/// before anything starts: unknown keys (with the likely intended one), values of the wrong type or
/// range, endpoints that clash, certificates that are missing, plugins that do not exist and every
/// plugin's own settings. It reports every issue at once, each with the file, line, endpoint, key and
/// a fix.
///
/// YAML (through Yams) because its parser gives every node's line, so each message can point at the
/// line to change; the format is also what operators already write for similar servers.
public struct ConfigurationLoader {
    /// The plugins endpoints may name.
    public var plugins: PluginRegistry

    /// A loader that knows `plugins`.
    public init(plugins: PluginRegistry = .builtIn) {
        self.plugins = plugins
    }

    /// Reads the file at `path`.
    /// - Throws: ``ConfigurationError`` with every issue found (one, when the file cannot be read).
    public func load(path: String) throws(ConfigurationError) -> ServerConfiguration {
        guard let text = readTextFile(path) else {
            throw ConfigurationError(issues: [ConfigurationIssue(
                file: path, line: nil, endpoint: nil, key: "(file)", problem: "cannot read the file (\(String(cString: strerror(errno))))",
                fix: "check the path and its permissions")])
        }
        return try parse(text, file: path)
    }

    /// Reads configuration text; `file` names it in messages.
    /// - Throws: ``ConfigurationError`` with every issue found.
    public func parse(_ text: String, file: String) throws(ConfigurationError) -> ServerConfiguration {
        let diagnostics = ConfigurationDiagnostics(file: file)
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ConfigurationError(issues: [Self.issue(forSyntaxError: error, file: file)])
        }
        guard let root, case .mapping = root else {
            throw ConfigurationError(issues: [ConfigurationIssue(
                file: file, line: root?.mark?.line, endpoint: nil, key: "(file)", problem: "the file is not a YAML mapping",
                fix: "start with `endpoints:` and a list of endpoints (see `keel-server --print-default-config`)")])
        }
        var reader = MappingReader(root, endpoint: nil, path: "", diagnostics: diagnostics)
        // Plugin libraries first: endpoints may name their plugins.
        var loader = self
        let librariesNode = reader.peek("plugin-libraries")
        let libraries = reader.stringList("plugin-libraries") ?? []
        for path in libraries {
            do {
                loader.plugins = try loader.plugins.adding(libraries: [path])
            } catch {
                diagnostics.report(line: librariesNode?.mark?.line, endpoint: nil, key: "plugin-libraries", problem: "\(error)",
                                   fix: "check the path; the library must export keel_plugin_entry (see keel_plugin.h)")
            }
        }
        var endpoints: [EndpointConfiguration] = []
        if let list = reader.take("endpoints") {
            if case .sequence(let items) = list {
                for (index, item) in items.enumerated() {
                    if let endpoint = loader.readEndpoint(item, index: index, diagnostics: diagnostics) { endpoints.append(endpoint) }
                }
            } else {
                diagnostics.report(line: list.mark?.line, endpoint: nil, key: "endpoints", problem: "must be a list of endpoints",
                                   fix: "write each endpoint as `- name: ...` under `endpoints:`")
            }
        }
        var admin: AdminConfiguration?
        if let node = reader.take("admin") {
            var adminReader = MappingReader(node, endpoint: nil, path: "admin.", diagnostics: diagnostics)
            if let listen = adminReader.listenAddresses("listen", required: true)?.first { admin = AdminConfiguration(listen: listen) }
            adminReader.finish(known: ["listen"])
        }
        let deadline = reader.duration("shutdown-deadline") ?? .seconds(10)
        reader.finish(known: ["endpoints", "admin", "shutdown-deadline", "plugin-libraries"])
        if endpoints.isEmpty && diagnostics.isClean {
            diagnostics.report(line: root.mark?.line, endpoint: nil, key: "endpoints", problem: "no endpoints",
                               fix: "add at least one endpoint under `endpoints:`")
        }
        checkClashes(endpoints, admin: admin, root: root, diagnostics: diagnostics)
        guard diagnostics.isClean else { throw ConfigurationError(issues: diagnostics.issues.sorted { ($0.line ?? 0) < ($1.line ?? 0) }) }
        var configuration = ServerConfiguration(endpoints: endpoints, admin: admin, shutdownDeadline: deadline, source: file)
        configuration.pluginLibraries = libraries
        return configuration
    }

    static let endpointKeys = ["name", "listen", "transport", "framing", "length-prefix-bytes", "fixed-size", "plugin",
                               "settings", "limits", "flow-control", "proxy-protocol", "tls", "websocket"]

    private func readEndpoint(_ node: Node, index: Int, diagnostics: ConfigurationDiagnostics) -> EndpointConfiguration? {
        guard case .mapping(let mapping) = node else {
            diagnostics.report(line: node.mark?.line, endpoint: "endpoints[\(index)]", key: "(endpoint)",
                               problem: "an endpoint must be a mapping", fix: "write `- name: ...` with the endpoint's keys under it")
            return nil
        }
        let nameNode = mapping["name"]
        let name = nameNode?.scalar?.string ?? "endpoints[\(index)]"
        var reader = MappingReader(node, endpoint: name, path: "", diagnostics: diagnostics)
        if let nameNode = reader.take("name") {
            let valid = !name.isEmpty && name.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }
            if nameNode.scalar == nil || !valid {
                reader.report(nameNode, "name", problem: "\"\(name)\" is not a valid name",
                              fix: "use letters, digits, '-', '_' and '.' only")
            }
        } else {
            reader.report(node, "name", problem: "missing", fix: "give the endpoint a unique `name:`")
        }
        let listen = reader.listenAddresses("listen", required: true) ?? []
        let transport = reader.choice("transport", EndpointConfiguration.Transport.self) ?? .tcp
        var framing = EndpointConfiguration.Framing.raw
        let framingNode = reader.peek("framing")
        if let text = reader.string("framing") {
            switch text {
            case "raw": framing = .raw
            case "line": framing = .line
            case "length-prefixed": framing = .lengthPrefixed(prefixBytes: 4)
            case "fixed": framing = .fixed(size: 0)
            default:
                reader.report(framingNode, "framing", problem: "unknown framing \"\(text)\"",
                              fix: "use one of raw, line, length-prefixed, fixed")
            }
            if !transport.isFramedStream {
                reader.report(framingNode, "framing", problem: "framing applies to tcp and tls endpoints only (\(transport.rawValue) messages are already delimited)",
                              fix: "remove `framing:`")
            }
        }
        if let prefixNode = reader.peek("length-prefix-bytes"), let prefix = reader.integer("length-prefix-bytes") {
            if case .lengthPrefixed = framing, [1, 2, 4, 8].contains(prefix) {
                framing = .lengthPrefixed(prefixBytes: prefix)
            } else if case .lengthPrefixed = framing {
                reader.report(prefixNode, "length-prefix-bytes", problem: "\(prefix) is not 1, 2, 4 or 8", fix: "use 1, 2, 4 or 8")
            } else {
                reader.report(prefixNode, "length-prefix-bytes", problem: "only for `framing: length-prefixed`", fix: "remove it or set the framing")
            }
        }
        let sizeNode = reader.peek("fixed-size")
        let fixedSize = reader.bytes("fixed-size")
        if case .fixed = framing {
            if let fixedSize, fixedSize > 0 {
                framing = .fixed(size: fixedSize)
            } else if fixedSize == nil && sizeNode == nil {
                reader.report(framingNode, "fixed-size", problem: "missing for `framing: fixed`", fix: "add `fixed-size: BYTES`")
            }
        } else if let sizeNode {
            reader.report(sizeNode, "fixed-size", problem: "only for `framing: fixed`", fix: "remove it or set `framing: fixed`")
        }

        let pluginNode = reader.peek("plugin")
        let plugin = reader.string("plugin", required: true) ?? ""
        let settings = reader.settings("settings")
        if !plugin.isEmpty {
            if let definition = plugins[plugin] {
                let settingsReader = PluginSettingsReader(settings, endpoint: name, diagnostics: diagnostics)
                _ = definition.prepare(settingsReader, transport)
                settingsReader.reportUnknownKeys(plugin: plugin)
            } else {
                let suggestion = closestMatch(to: plugin, in: plugins.names).map { "did you mean \"\($0)\"? " } ?? ""
                reader.report(pluginNode, "plugin", problem: "no plugin named \"\(plugin)\"",
                              fix: suggestion + "known plugins: \(plugins.names.joined(separator: ", "))")
            }
        }

        var limits = EndpointLimits()
        if let node = reader.take("limits") {
            var sub = MappingReader(node, endpoint: name, path: "limits.", diagnostics: diagnostics)
            if let value = sub.integer("max-connections", minimum: 1) { limits.maximumConnections = value }
            if let value = sub.integer("accept-rate", minimum: 1) { limits.acceptRate = value }
            limits.idleTimeout = sub.duration("idle-timeout")
            limits.readTimeout = sub.duration("read-timeout")
            if let value = sub.bytes("max-message-bytes", minimum: 1) { limits.maximumMessageBytes = value }
            sub.finish(known: ["max-connections", "accept-rate", "idle-timeout", "read-timeout", "max-message-bytes"])
        }
        if case .fixed(let size) = framing, size > limits.maximumMessageBytes {
            reader.report(sizeNode, "fixed-size", problem: "\(size) is larger than limits.max-message-bytes (\(limits.maximumMessageBytes))",
                          fix: "raise limits.max-message-bytes or lower fixed-size")
        }

        var flow = FlowControlPolicy()
        if let node = reader.take("flow-control") {
            var sub = MappingReader(node, endpoint: name, path: "flow-control.", diagnostics: diagnostics)
            if let value = sub.bytes("high-watermark", minimum: 1) { flow.highWatermark = value }
            let limitNode = sub.peek("limit")
            if let value = sub.bytes("limit", minimum: 1) { flow.limit = value }
            if let value = sub.choice("policy", FlowControlPolicy.Policy.self) { flow.policy = value }
            if let value = sub.bool("pause-reading") { flow.pausesReading = value }
            if flow.limit < flow.highWatermark {
                sub.report(limitNode ?? node, "limit", problem: "\(flow.limit) is below the high watermark (\(flow.highWatermark))",
                           fix: "make flow-control.limit at least flow-control.high-watermark")
            }
            sub.finish(known: ["high-watermark", "limit", "policy", "pause-reading"])
        }

        var proxy = ProxyProtocolSetting.off
        if let node = reader.take("proxy-protocol") {
            if transport == .udp {
                reader.report(node, "proxy-protocol", problem: "the PROXY protocol is for stream transports",
                              fix: "remove it from this udp endpoint")
            }
            if let text = node.scalar?.string {
                switch text {
                case "off", "false", "no": proxy = .off
                case "required", "on", "true", "yes": proxy = .required
                default:
                    reader.report(node, "proxy-protocol", problem: "\"\(text)\" is not off, required or a mapping with `trusted:`",
                                  fix: "write `proxy-protocol: required`, or `proxy-protocol: { trusted: [10.0.0.0/8] }`")
                }
            } else {
                var sub = MappingReader(node, endpoint: name, path: "proxy-protocol.", diagnostics: diagnostics)
                let trustedNode = sub.peek("trusted")
                let ranges = sub.stringList("trusted", required: true) ?? []
                for range in ranges {
                    do { _ = try ProxyAddressRange(range) } catch {
                        sub.report(trustedNode, "trusted", problem: "\"\(range)\" is not an address range (\(error))",
                                   fix: "write CIDR ranges such as 10.0.0.0/8 or fd00::/8")
                    }
                }
                proxy = .trusted(ranges)
                sub.finish(known: ["trusted"])
            }
        }

        var tls: TLSSettings?
        let tlsNode = reader.take("tls")
        if let tlsNode {
            var sub = MappingReader(tlsNode, endpoint: name, path: "tls.", diagnostics: diagnostics)
            let certificate = sub.readableFile("certificate", required: true)
            let key = sub.readableFile("key", required: true)
            let clientCA = sub.readableFile("client-ca")
            let alpn = sub.stringList("alpn") ?? []
            sub.finish(known: ["certificate", "key", "client-ca", "alpn"])
            if let certificate, let key { tls = TLSSettings(certificate: certificate, key: key, clientCA: clientCA, alpn: alpn) }
            if !transport.usesTLS {
                reader.report(tlsNode, "tls", problem: "certificates on a \(transport.rawValue) endpoint are not used",
                              fix: "set `transport: \(transport == .ws ? "wss" : "tls")`, or remove `tls:`")
            }
        } else if transport.usesTLS {
            reader.report(node, "tls", problem: "a \(transport.rawValue) endpoint needs certificates",
                          fix: "add `tls: { certificate: cert.pem, key: key.pem }`")
        }

        var webSocket = WebSocketSettings()
        if let node = reader.take("websocket") {
            if transport != .ws && transport != .wss {
                reader.report(node, "websocket", problem: "WebSocket options on a \(transport.rawValue) endpoint are not used",
                              fix: "set `transport: ws` (or wss), or remove `websocket:`")
            }
            var sub = MappingReader(node, endpoint: name, path: "websocket.", diagnostics: diagnostics)
            if let value = sub.bool("compression") { webSocket.compression = value }
            if sub.peek("ping-interval")?.scalar?.string == "off" {
                _ = sub.take("ping-interval")
                webSocket.pingInterval = nil
            } else if sub.peek("ping-interval") != nil {
                webSocket.pingInterval = sub.duration("ping-interval")
            }
            webSocket.allowedOrigins = sub.stringList("allowed-origins") ?? []
            sub.finish(known: ["compression", "ping-interval", "allowed-origins"])
        }
        reader.finish(known: Self.endpointKeys)
        return EndpointConfiguration(name: name, listen: listen, transport: transport, framing: framing, plugin: plugin,
                                     settings: settings, limits: limits, flowControl: flow, proxyProtocol: proxy, tls: tls,
                                     webSocket: webSocket)
    }

    /// Duplicate names, and two listeners on one port of one protocol.
    private func checkClashes(_ endpoints: [EndpointConfiguration], admin: AdminConfiguration?, root: Node,
                              diagnostics: ConfigurationDiagnostics) {
        var names: [String: Int] = [:]
        var streamPorts: [UInt16: String] = [:]
        var datagramPorts: [UInt16: String] = [:]
        for (index, endpoint) in endpoints.enumerated() {
            if let first = names[endpoint.name] {
                diagnostics.report(line: nil, endpoint: endpoint.name, key: "name",
                                   problem: "endpoints \(first + 1) and \(index + 1) have the same name", fix: "give each endpoint its own name")
            } else {
                names[endpoint.name] = index
            }
            for address in endpoint.listen where address.port != 0 {
                if endpoint.transport == .udp {
                    if let other = datagramPorts[address.port] {
                        diagnostics.report(line: nil, endpoint: endpoint.name, key: "listen",
                                           problem: "UDP port \(address.port) is already used by endpoint \"\(other)\"", fix: "pick another port")
                    }
                    datagramPorts[address.port] = endpoint.name
                } else {
                    if let other = streamPorts[address.port] {
                        diagnostics.report(line: nil, endpoint: endpoint.name, key: "listen",
                                           problem: "TCP port \(address.port) is already used by endpoint \"\(other)\"", fix: "pick another port")
                    }
                    streamPorts[address.port] = endpoint.name
                }
            }
        }
        if let admin, admin.listen.port != 0, let other = streamPorts[admin.listen.port] {
            diagnostics.report(line: nil, endpoint: nil, key: "admin.listen",
                               problem: "TCP port \(admin.listen.port) is already used by endpoint \"\(other)\"", fix: "pick another port")
        }
    }

    /// A YAML syntax error as an issue with its line.
    static func issue(forSyntaxError error: any Error, file: String) -> ConfigurationIssue {
        var line: Int?
        var problem = "\(error)"
        if let yaml = error as? YamlError {
            switch yaml {
            case .scanner(_, let text, let mark, _), .parser(_, let text, let mark, _), .composer(_, let text, let mark, _):
                line = mark.line
                problem = text
            case .duplicatedKeysInMapping(let duplicates, _):
                problem = "duplicate keys \(duplicates.joined(separator: ", "))"
            default:
                break
            }
        }
        return ConfigurationIssue(file: file, line: line, endpoint: nil, key: "(syntax)", problem: "not valid YAML: \(problem)",
                                  fix: "correct the YAML at this line (indentation, a missing ':' or an unclosed quote)")
    }
}

/// Reads one YAML mapping's keys with types, noting which keys were read so the rest can be reported
/// as unknown.
struct MappingReader {
    let node: Node
    let endpoint: String?
    let path: String
    let diagnostics: ConfigurationDiagnostics
    private var used: Set<String> = []

    init(_ node: Node, endpoint: String?, path: String, diagnostics: ConfigurationDiagnostics) {
        self.node = node
        self.endpoint = endpoint
        self.path = path
        self.diagnostics = diagnostics
        if node.mapping == nil {
            diagnostics.report(line: node.mark?.line, endpoint: endpoint, key: String(path.dropLast()), problem: "must be a mapping",
                               fix: "write its keys indented under it, one `key: value` per line")
        }
    }

    func report(_ at: Node?, _ key: String, problem: String, fix: String) {
        diagnostics.report(line: at?.mark?.line ?? node.mark?.line, endpoint: endpoint, key: path + key, problem: problem, fix: fix)
    }

    func peek(_ key: String) -> Node? { node.mapping?[key] }

    mutating func take(_ key: String) -> Node? {
        used.insert(key)
        return node.mapping?[key]
    }

    mutating func string(_ key: String, required: Bool = false) -> String? {
        guard let value = take(key) else {
            if required { report(nil, key, problem: "missing", fix: "add `\(key):`") }
            return nil
        }
        guard let text = value.scalar?.string else {
            report(value, key, problem: "must be a single value", fix: "write `\(key): VALUE`")
            return nil
        }
        return text
    }

    mutating func stringList(_ key: String, required: Bool = false) -> [String]? {
        guard let value = take(key) else {
            if required { report(nil, key, problem: "missing", fix: "add `\(key): [ ... ]`") }
            return nil
        }
        if let text = value.scalar?.string { return [text] }
        guard case .sequence(let items) = value else {
            report(value, key, problem: "must be a value or a list of values", fix: "write `\(key): [A, B]`")
            return nil
        }
        var result: [String] = []
        for item in items {
            guard let text = item.scalar?.string else {
                report(item, key, problem: "each entry must be a single value", fix: "write `\(key): [A, B]`")
                continue
            }
            result.append(text)
        }
        return result
    }

    mutating func integer(_ key: String, minimum: Int = 0) -> Int? {
        guard let text = string(key) else { return nil }
        guard let value = Int(text), value >= minimum else {
            report(peek(key), key, problem: "\"\(text)\" is not a whole number of at least \(minimum)", fix: "write a number such as \(max(minimum, 1))")
            return nil
        }
        return value
    }

    mutating func bool(_ key: String) -> Bool? {
        guard let text = string(key) else { return nil }
        guard let value = parseBool(text) else {
            report(peek(key), key, problem: "\"\(text)\" is not a boolean", fix: "write true or false")
            return nil
        }
        return value
    }

    /// A size in bytes: a number, or one with a unit (`64KiB`, `16 MiB`, `1GiB`, `500kB`).
    mutating func bytes(_ key: String, minimum: Int = 0) -> Int? {
        guard let text = string(key) else { return nil }
        guard let value = parseByteCount(text), value >= minimum else {
            report(peek(key), key, problem: "\"\(text)\" is not a size of at least \(minimum) bytes",
                   fix: "write bytes, or a number with KiB, MiB or GiB (e.g. 64KiB)")
            return nil
        }
        return value
    }

    /// A duration: seconds as a number, or with a unit (`500ms`, `10s`, `5m`, `1h`).
    mutating func duration(_ key: String) -> Duration? {
        guard let text = string(key) else { return nil }
        guard let value = parseDuration(text) else {
            report(peek(key), key, problem: "\"\(text)\" is not a duration", fix: "write seconds (10), or a number with ms, s, m or h (500ms)")
            return nil
        }
        return value
    }

    mutating func choice<Choice: RawRepresentable & CaseIterable>(_ key: String, _ type: Choice.Type) -> Choice?
    where Choice.RawValue == String {
        guard let text = string(key) else { return nil }
        guard let value = Choice(rawValue: text) else {
            let names = Choice.allCases.map(\.rawValue)
            let suggestion = closestMatch(to: text, in: names).map { "did you mean \"\($0)\"? " } ?? ""
            report(peek(key), key, problem: "unknown value \"\(text)\"", fix: suggestion + "use one of \(names.joined(separator: ", "))")
            return nil
        }
        return value
    }

    mutating func listenAddresses(_ key: String, required: Bool) -> [ListenAddress]? {
        let node = peek(key)
        guard let texts = stringList(key, required: required) else { return nil }
        var addresses: [ListenAddress] = []
        for text in texts {
            if let address = ListenAddress(parsing: text), SocketAddressCheck.isNumeric(address.host) {
                addresses.append(address)
            } else {
                report(node, key, problem: "\"\(text)\" is not HOST:PORT with a numeric host",
                       fix: "write e.g. 127.0.0.1:7007, [::1]:7007 or *:7007")
            }
        }
        if addresses.isEmpty && texts.isEmpty { report(node, key, problem: "no addresses", fix: "write at least one HOST:PORT") }
        return addresses
    }

    /// A file that must exist and be readable now (certificates, keys).
    mutating func readableFile(_ key: String, required: Bool = false) -> String? {
        guard let path = string(key, required: required) else { return nil }
        if access(path, R_OK) != 0 {
            report(peek(key), key, problem: "cannot read \"\(path)\" (\(String(cString: strerror(errno))))",
                   fix: "check the path (relative paths start from the server's working directory) and its permissions")
        }
        return path
    }

    mutating func settings(_ key: String) -> PluginSettings {
        guard let node = take(key) else { return PluginSettings() }
        guard case .mapping(let mapping) = node else {
            report(node, key, problem: "must be a mapping of setting names to values", fix: "write `settings: { name: value }`")
            return PluginSettings()
        }
        var values: [String: PluginSettings.Value] = [:]
        for (keyNode, valueNode) in mapping {
            guard let name = keyNode.scalar?.string else { continue }
            if let text = valueNode.scalar?.string {
                values[name] = PluginSettings.Value(text, line: valueNode.mark?.line)
            } else if case .sequence(let items) = valueNode {
                // Lists arrive as comma-separated text.
                let texts = items.compactMap { $0.scalar?.string }
                values[name] = PluginSettings.Value(texts.joined(separator: ","), line: valueNode.mark?.line)
            } else {
                report(valueNode, "\(key).\(name)", problem: "must be a value or a list of values", fix: "write `\(name): VALUE`")
            }
        }
        return PluginSettings(values: values, line: node.mark?.line)
    }

    /// Reports every key of the mapping that was not read, suggesting the likely intended one.
    func finish(known: [String]) {
        guard let mapping = node.mapping else { return }
        for (keyNode, _) in mapping {
            guard let key = keyNode.scalar?.string, !used.contains(key) else { continue }
            let suggestion = closestMatch(to: key, in: known).map { "did you mean \"\($0)\"?" }
            diagnostics.report(line: keyNode.mark?.line, endpoint: endpoint, key: path + key, problem: "unknown key",
                               fix: suggestion ?? "remove it; known keys here: \(known.joined(separator: ", "))")
        }
    }
}

/// Checks that a host is a numeric IPv4 or IPv6 address.
enum SocketAddressCheck {
    static func isNumeric(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }
}

/// `65536`, `64KiB`, `64 KiB`, `16MiB`, `1GiB`, `500kB`, `2MB`; nil for anything else.
func parseByteCount(_ text: String) -> Int? {
    let trimmed = text.filter { $0 != " " && $0 != "_" }
    let units: [(String, Int)] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("GB", 1_000_000_000),
                                  ("MB", 1_000_000), ("kB", 1000), ("KB", 1000), ("B", 1)]
    for (unit, scale) in units where trimmed.hasSuffix(unit) {
        guard let number = Int(trimmed.dropLast(unit.count)) else { return nil }
        let (product, overflow) = number.multipliedReportingOverflow(by: scale)
        return overflow ? nil : product
    }
    return Int(trimmed)
}

/// `10` (seconds), `2.5`, `500ms`, `10s`, `5m`, `1h`; nil for anything else or a negative value.
func parseDuration(_ text: String) -> Duration? {
    let trimmed = text.filter { $0 != " " }
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
    var number = Double(trimmed)
    if number == nil {
        for (unit, scale) in units where trimmed.hasSuffix(unit) {
            if let value = Double(trimmed.dropLast(unit.count)) { number = value * scale }
            break
        }
    }
    guard let seconds = number, seconds >= 0, seconds < 1e9 else { return nil }
    return .milliseconds(Int64((seconds * 1000).rounded()))
}

/// The whole file as text, or nil when it cannot be read.
func readTextFile(_ path: String) -> String? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = fread(&chunk, 1, chunk.count, file)
        if count > 0 { bytes.append(contentsOf: chunk[..<count]) }
        if count < chunk.count { break }
    }
    if ferror(file) != 0 { return nil }
    return String(decoding: bytes, as: UTF8.self)
}
