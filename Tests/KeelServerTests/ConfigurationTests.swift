import KeelServer
import Testing

/// Configuration parsing and validation, in memory.
@Suite("keel-server configuration")
struct ConfigurationTests {
    let loader = ConfigurationLoader()

    @Test func theEmbeddedDefaultParsesWithTheTCPEchoEndpointFirst() throws {
        let configuration = try loader.parse(DefaultConfiguration.yaml, file: "<default>")
        #expect(configuration.endpoints.first?.name == "echo")
        #expect(configuration.endpoints.first?.listen == [ListenAddress(host: "127.0.0.1", port: 7007)])
        #expect(configuration.endpoints.first?.transport == .tcp)
        #expect(configuration.endpoints.map(\.name) == ["echo", "echo-udp", "chat", "ws-echo", "kv"])
        #expect(configuration.admin?.listen.port == 7070)
        #expect(configuration.shutdownDeadline == .seconds(10))
        let kv = try #require(configuration.endpoints.last)
        #expect(kv.framing == .line)
        #expect(kv.settings.values["max-keys"]?.text == "100000")
    }

    @Test func theResolvedConfigurationReadsBackToTheSameConfiguration() throws {
        let configuration = try loader.parse(DefaultConfiguration.yaml, file: "<default>")
        let again = try loader.parse(configuration.resolvedYAML, file: "<resolved>")
        #expect(again.endpoints == configuration.endpoints)
        #expect(again.admin == configuration.admin)
        #expect(again.shutdownDeadline == configuration.shutdownDeadline)
    }

    @Test func valuesThatNeedQuotingSurviveTheResolvedConfiguration() throws {
        let text = """
        endpoints:
          - name: tricky
            listen: ["[::1]:0", "*:0"]
            transport: ws
            plugin: chat
            settings: { room: "lobby#1", "max-rooms": "7" }
            proxy-protocol: { trusted: ["fd00::/8", 10.0.0.0/8] }
            websocket: { allowed-origins: ["https://a.example:8443", "http://b.example"], ping-interval: off }
        """
        let configuration = try ConfigurationLoader().parse(text, file: "tricky.yaml")
        let again = try ConfigurationLoader().parse(configuration.resolvedYAML, file: "resolved.yaml")
        #expect(again.endpoints == configuration.endpoints, "\(configuration.resolvedYAML)")
        #expect(again.endpoints[0].settings.values["room"]?.text == "lobby#1")
        #expect(again.endpoints[0].webSocket.pingInterval == nil)
    }

    @Test func aBadFileIsRefusedWithEveryErrorAtOnceEachWithItsLineKeyAndFix() throws {
        let text = """
        shutdown-deadline: soon
        endpoints:
          - name: one
            listen: 127.0.0.1:nope
            transport: tcpp
            framing: lines
            plugin: ech
          - name: two
            listen: 127.0.0.1:7101
            transport: udp
            framing: line
            plugin: kv
            settings:
              max-keys: lots
              colour: blue
            limits:
              max-connectoins: 5
          - name: three
            listen: 127.0.0.1:7102
            transport: tls
            plugin: echo
            flow-control:
              high-watermark: 1MiB
              limit: 64KiB
          - name: one
            listen: 127.0.0.1:7102
            plugin: echo
        admin:
          listen: 127.0.0.1:7102
        """
        let error = try #require(throws: ConfigurationError.self) { try loader.parse(text, file: "bad.yaml") }
        let lines = error.issues.map(\.description)
        func expectIssue(line: Int?, endpoint: String?, key: String, _ fragment: String, fix: String) {
            let match = error.issues.first { $0.line == line && $0.endpoint == endpoint && $0.key == key }
            #expect(match != nil, "no issue at line \(line ?? -1) for \(endpoint ?? "-") \(key) in:\n\(lines.joined(separator: "\n"))")
            if let match {
                #expect(match.problem.contains(fragment), "\(match)")
                #expect(match.fix.contains(fix), "\(match)")
                #expect(match.description.hasPrefix("bad.yaml:\(line.map(String.init) ?? "")"))
            }
        }
        expectIssue(line: 1, endpoint: nil, key: "shutdown-deadline", "\"soon\" is not a duration", fix: "500ms")
        expectIssue(line: 4, endpoint: "one", key: "listen", "\"127.0.0.1:nope\" is not HOST:PORT", fix: "127.0.0.1:7007")
        expectIssue(line: 5, endpoint: "one", key: "transport", "unknown value \"tcpp\"", fix: "did you mean \"tcp\"?")
        expectIssue(line: 6, endpoint: "one", key: "framing", "unknown framing \"lines\"", fix: "raw, line, length-prefixed, fixed")
        expectIssue(line: 7, endpoint: "one", key: "plugin", "no plugin named \"ech\"", fix: "did you mean \"echo\"?")
        expectIssue(line: 11, endpoint: "two", key: "framing", "framing applies to tcp and tls endpoints only", fix: "remove")
        expectIssue(line: 14, endpoint: "two", key: "settings.max-keys", "\"lots\" is not an integer", fix: "whole number")
        expectIssue(line: 15, endpoint: "two", key: "settings.colour", "plugin \"kv\" has no setting \"colour\"", fix: "remove it")
        expectIssue(line: 17, endpoint: "two", key: "limits.max-connectoins", "unknown key", fix: "did you mean \"max-connections\"?")
        expectIssue(line: 18, endpoint: "three", key: "tls", "a tls endpoint needs certificates", fix: "tls: { certificate")
        expectIssue(line: 24, endpoint: "three", key: "flow-control.limit", "below the high watermark", fix: "at least")
        expectIssue(line: nil, endpoint: "one", key: "name", "endpoints 1 and 4 have the same name", fix: "own name")
        expectIssue(line: nil, endpoint: "one", key: "listen", "TCP port 7102 is already used by endpoint \"three\"", fix: "another port")
        expectIssue(line: nil, endpoint: nil, key: "admin.listen", "TCP port 7102 is already used", fix: "another port")
        #expect(error.description.hasPrefix("configuration refused, \(error.issues.count) errors:"))
    }

    @Test func aYAMLSyntaxErrorNamesItsLine() throws {
        let text = "endpoints:\n  - name: a\n    listen: [127.0.0.1:1\n    plugin: echo\n"
        let error = try #require(throws: ConfigurationError.self) { try loader.parse(text, file: "broken.yaml") }
        #expect(error.issues.count == 1)
        #expect(error.issues[0].key == "(syntax)")
        #expect(error.issues[0].line != nil)
        #expect(error.issues[0].description.hasPrefix("broken.yaml:"))
    }

    @Test func aMissingFileIsOneClearError() throws {
        let error = try #require(throws: ConfigurationError.self) { try loader.load(path: "/nonexistent/keel.yaml") }
        #expect(error.issues.count == 1)
        #expect(error.issues[0].problem.contains("cannot read the file"))
    }

    @Test func certificatesThatCannotBeReadAreNamed() throws {
        let text = """
        endpoints:
          - name: secure
            listen: 127.0.0.1:0
            transport: wss
            plugin: echo
            tls: { certificate: /nonexistent/cert.pem, key: /nonexistent/key.pem }
            websocket: { compression: maybe }
        """
        let error = try #require(throws: ConfigurationError.self) { try loader.parse(text, file: "tls.yaml") }
        #expect(error.issues.contains { $0.key == "tls.certificate" && $0.problem.contains("/nonexistent/cert.pem") && $0.line == 6 })
        #expect(error.issues.contains { $0.key == "tls.key" })
        #expect(error.issues.contains { $0.key == "websocket.compression" && $0.problem.contains("not a boolean") })
    }

    @Test func valuesTakeUnitsAndEveryFramingHasItsOptions() throws {
        let text = """
        endpoints:
          - name: frames
            listen: ["127.0.0.1:0", "[::1]:0"]
            framing: length-prefixed
            length-prefix-bytes: 2
            plugin: echo
            limits: { idle-timeout: 1.5, read-timeout: 250ms, max-message-bytes: 16KiB, accept-rate: 100 }
            flow-control: { high-watermark: 64 KiB, limit: 1MiB, policy: drop-oldest, pause-reading: no }
            proxy-protocol: { trusted: [10.0.0.0/8, "fd00::/8"] }
          - name: fixed
            listen: "*:0"
            framing: fixed
            fixed-size: 32
            plugin: echo
        """
        let configuration = try loader.parse(text, file: "units.yaml")
        let frames = configuration.endpoints[0]
        #expect(frames.listen == [ListenAddress(host: "127.0.0.1", port: 0), ListenAddress(host: "::1", port: 0)])
        #expect(frames.framing == .lengthPrefixed(prefixBytes: 2))
        #expect(frames.limits.idleTimeout == .milliseconds(1500))
        #expect(frames.limits.readTimeout == .milliseconds(250))
        #expect(frames.limits.maximumMessageBytes == 16384)
        #expect(frames.limits.acceptRate == 100)
        #expect(frames.flowControl == FlowControlPolicy(highWatermark: 65536, limit: 1 << 20, policy: .dropOldest, pausesReading: false))
        #expect(frames.proxyProtocol == .trusted(["10.0.0.0/8", "fd00::/8"]))
        #expect(configuration.endpoints[1].framing == .fixed(size: 32))
        #expect(configuration.endpoints[1].listen == [ListenAddress(host: "0.0.0.0", port: 0)])
    }

    @Test func listenAddressesParse() {
        #expect(ListenAddress(parsing: "127.0.0.1:80") == ListenAddress(host: "127.0.0.1", port: 80))
        #expect(ListenAddress(parsing: "[::1]:443") == ListenAddress(host: "::1", port: 443))
        #expect(ListenAddress(parsing: "*:7007") == ListenAddress(host: "0.0.0.0", port: 7007))
        #expect(ListenAddress(parsing: "::1:443") == nil)
        #expect(ListenAddress(parsing: "127.0.0.1:70000") == nil)
        #expect(ListenAddress(parsing: "127.0.0.1") == nil)
        #expect(ListenAddress(host: "::1", port: 9).description == "[::1]:9")
    }
}

/// Every message the loader can give, one small file each: the key it names and what it says.
@Suite("keel-server configuration messages")
struct ConfigurationMessageTests {
    static let cases: [(yaml: String, key: String, problem: String)] = [
        ("- a\n- b\n", "(file)", "the file is not a YAML mapping"),
        ("endpoints: 3\n", "endpoints", "must be a list of endpoints"),
        ("endpoints: []\n", "endpoints", "no endpoints"),
        ("endpoints: [3]\n", "(endpoint)", "an endpoint must be a mapping"),
        ("endpoints:\n  - { name: \"a b\", listen: \"127.0.0.1:1\", plugin: echo }\n", "name", "\"a b\" is not a valid name"),
        ("endpoints:\n  - { listen: \"127.0.0.1:1\", plugin: echo }\n", "name", "missing"),
        ("endpoints:\n  - { name: a, plugin: echo }\n", "listen", "missing"),
        ("endpoints:\n  - { name: a, listen: [], plugin: echo }\n", "listen", "no addresses"),
        ("endpoints:\n  - { name: a, listen: [[1]], plugin: echo }\n", "listen", "each entry must be a single value"),
        ("endpoints:\n  - { name: a, listen: { x: 1 }, plugin: echo }\n", "listen", "must be a value or a list of values"),
        ("endpoints:\n  - { name: a, listen: \"localhost:80\", plugin: echo }\n", "listen", "is not HOST:PORT with a numeric host"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\" }\n", "plugin", "missing"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: [echo] }\n", "plugin", "must be a single value"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, framing: length-prefixed, length-prefix-bytes: 3 }\n",
         "length-prefix-bytes", "3 is not 1, 2, 4 or 8"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, length-prefix-bytes: 2 }\n",
         "length-prefix-bytes", "only for `framing: length-prefixed`"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, framing: fixed }\n", "fixed-size", "missing for `framing: fixed`"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, fixed-size: 4 }\n", "fixed-size", "only for `framing: fixed`"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, framing: fixed, fixed-size: 100, limits: { max-message-bytes: 10 } }\n",
         "fixed-size", "100 is larger than limits.max-message-bytes (10)"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, limits: { max-connections: 0 } }\n",
         "limits.max-connections", "\"0\" is not a whole number of at least 1"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, limits: { max-message-bytes: 12XB } }\n",
         "limits.max-message-bytes", "\"12XB\" is not a size of at least 1 bytes"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, limits: 5 }\n", "limits", "must be a mapping"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, flow-control: { policy: drop } }\n",
         "flow-control.policy", "unknown value \"drop\""),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, flow-control: { pause-reading: sometimes } }\n",
         "flow-control.pause-reading", "\"sometimes\" is not a boolean"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", transport: udp, plugin: echo, proxy-protocol: required }\n",
         "proxy-protocol", "the PROXY protocol is for stream transports"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, proxy-protocol: maybe }\n",
         "proxy-protocol", "\"maybe\" is not off, required or a mapping"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, proxy-protocol: { trusted: [10.0.0.0/33] } }\n",
         "proxy-protocol.trusted", "\"10.0.0.0/33\" is not an address range"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, proxy-protocol: {} }\n", "proxy-protocol.trusted", "missing"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, tls: { certificate: /etc/hostname, key: /etc/hostname } }\n",
         "tls", "certificates on a tcp endpoint are not used"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, websocket: { compression: true } }\n",
         "websocket", "WebSocket options on a tcp endpoint are not used"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", transport: ws, plugin: echo, websocket: { ping-interval: often } }\n",
         "websocket.ping-interval", "\"often\" is not a duration"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, settings: 3 }\n", "settings", "must be a mapping of setting names to values"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: chat, settings: { room: { x: 1 } } }\n",
         "settings.room", "must be a value or a list of values"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: chat, settings: { room: \"two words\" } }\n",
         "settings.room", "\"two words\" is not a room name"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: kv, settings: { max-value-bytes: 1TB } }\n",
         "settings.max-value-bytes", "\"1TB\" is not a size in"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo, colour: red }\n", "colour", "unknown key"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", transport: udp, plugin: echo }\n  - { name: b, listen: \"127.0.0.1:1\", transport: udp, plugin: echo }\n",
         "listen", "UDP port 1 is already used by endpoint \"a\""),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo }\nadmin: 5\n", "admin", "must be a mapping"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo }\nadmin: {}\n", "admin.listen", "missing"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo }\nshutdown-deadline: -1\n", "shutdown-deadline", "\"-1\" is not a duration"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo }\nplugin-libraries: [/nonexistent.so]\n",
         "plugin-libraries", "cannot load the library"),
        ("endpoints:\n  - { name: a, listen: \"127.0.0.1:1\", plugin: echo\n", "(syntax)", "not valid YAML"),
    ]

    @Test(arguments: cases.indices)
    func eachMistakeGetsItsMessage(index: Int) throws {
        let (yaml, key, problem) = Self.cases[index]
        let error = try #require(throws: ConfigurationError.self) { try ConfigurationLoader().parse(yaml, file: "case.yaml") }
        #expect(error.issues.contains { $0.key == key && $0.problem.contains(problem) && !$0.fix.isEmpty },
                "case \(index): expected \(key): \(problem) in\n\(error)")
        #expect(error.issues.allSatisfy { $0.description.hasPrefix("case.yaml") })
    }
}
