import Glibc
import KeelEngine
import KeelServer
import KeelSockets
import KeelSystem
import KeelTestSupport
import KeelWebSocket
import Testing

/// Starts a server from YAML on a fresh pool and hands `body` the address of each endpoint.
func withServer<Result: Sendable>(
    _ yaml: String, backend: BackendKind, _ body: @Sendable (ServerHost, [String: SocketAddress]) async throws -> Result
) async throws -> Result {
    let configuration = try ConfigurationLoader().parse(yaml, file: "test.yaml")
    let pool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 1))
    defer { pool.shutdown() }
    let host = try await ServerHost(configuration: configuration, pool: pool)
    var addresses: [String: SocketAddress] = [:]
    for listener in host.listeners { addresses[listener.endpoint] = listener.address }
    do {
        let result = try await body(host, addresses)
        await host.shutdown(deadline: .seconds(2))
        return result
    } catch {
        await host.shutdown(deadline: .zero)
        throw error
    }
}


@Suite("keel-server endpoints and plugins")
struct ServerEndpointTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func echoAnswersOverTCPUDPAndWebSockets(backend: BackendKind) async throws {
        let yaml = """
        endpoints:
          - { name: tcp, listen: 127.0.0.1:0, plugin: echo }
          - { name: udp, listen: 127.0.0.1:0, transport: udp, plugin: echo }
          - { name: ws, listen: 127.0.0.1:0, transport: ws, plugin: echo }
        admin: { listen: 127.0.0.1:0 }
        """
        try await withServer(yaml, backend: backend) { host, addresses in
            let tcp = try #require(addresses["tcp"])
            let udp = try #require(addresses["udp"])
            let (streamed, datagram) = try await blocking {
                let client = try TestClient(tcp)
                defer { client.close() }
                let payload = (0..<50_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
                client.send(payload)
                let streamed = client.read(payload.count) == payload
                let udpClient = try TestClient(udp, udp: true)
                defer { udpClient.close() }
                udpClient.send("datagram")
                return (streamed, udpClient.read(8) == Array("datagram".utf8))
            }
            #expect(streamed)
            #expect(datagram)

            let pool = try IOPool(configuration: .init(threadCount: 1, backend: backend, workPoolThreadCount: 1))
            defer { pool.shutdown() }
            let socket = try await AsyncWebSocketConnector(pool: pool, host: "localhost").connect(to: try #require(addresses["ws"]))
            try await socket.send(text: "héllo")
            try await socket.send(binary: [0, 1, 2, 255])
            let first = try await socket.receive()
            let second = try await socket.receive()
            #expect(first?.kind == .text && first?.text == "héllo")
            #expect(second?.kind == .binary && second?.bytes == [0, 1, 2, 255])
            await socket.close()

            let status = host.status
            let counted = status.endpoints.first { $0.name == "tcp" }?.traffic
            #expect(counted?.bytesIn == 50_000 && counted?.bytesOut == 50_000)
            #expect(status.endpoints.first { $0.name == "ws" }?.traffic.messagesIn == 2)
            #expect(host.listeners.last?.endpoint == "admin")

            // The admin listener: Prometheus's text format, the JSON the page draws, the page.
            let admin = try #require(addresses["admin"])
            #expect(await eventually { host.status.endpoints.first { $0.name == "tcp" }?.traffic.closeReasons["peerClosed"] == 1 })
            let (metrics, json, page) = try await blocking {
                (try httpGet(admin, "/metrics"), try httpGet(admin, "/status.json"), try httpGet(admin, "/"))
            }
            #expect(metrics.status == 200 && json.status == 200 && page.status == 200)
            var samples: [String: Double] = [:]
            for line in metrics.body.split(separator: "\n") where !line.hasPrefix("#") {
                let parts = line.split(separator: " ")
                if parts.count == 2, let value = Double(parts[1]) { samples[String(parts[0])] = value }
            }
            #expect(samples["keel_bytes_received_total{endpoint=\"tcp\",transport=\"tcp\"}"] == 50_000)
            #expect(samples["keel_messages_received_total{endpoint=\"ws\",transport=\"ws\"}"] == 2)
            #expect(samples["keel_messages_sent_total{endpoint=\"udp\",transport=\"udp\"}"] == 1)
            #expect(samples["keel_connections_open{endpoint=\"ws\",transport=\"ws\"}"] != nil)
            #expect(samples["keel_buffer_pool_slab_bytes"].map { $0 > 0 } == true)
            #expect(samples["keel_connections_closed_total{endpoint=\"tcp\",transport=\"tcp\",reason=\"peerClosed\"}"] == 1)
            #expect(samples["keel_io_thread_lag_worst_seconds{thread=\"1\"}"] != nil)
            #expect(json.body.contains("\"name\":\"tcp\"") && json.body.contains("\"bytes_in\":50000"))
            #expect(page.body.contains("<title>keel-server status</title>") && page.body.contains("/status.json"))
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func framedEndpointsSplitAndFrameMessages(backend: BackendKind) async throws {
        let yaml = """
        endpoints:
          - { name: line, listen: 127.0.0.1:0, framing: line, plugin: echo }
          - { name: prefixed, listen: 127.0.0.1:0, framing: length-prefixed, length-prefix-bytes: 2, plugin: echo,
              limits: { max-message-bytes: 100000 } }
          - { name: fixed, listen: 127.0.0.1:0, framing: fixed, fixed-size: 4, plugin: echo }
          - { name: fixedkv, listen: 127.0.0.1:0, framing: fixed, fixed-size: 5, plugin: kv }
        """
        try await withServer(yaml, backend: backend) { host, addresses in
            let line = try #require(addresses["line"])
            let prefixed = try #require(addresses["prefixed"])
            let fixed = try #require(addresses["fixed"])
            let (lines, frames, blocks) = try await blocking {
                let lineClient = try TestClient(line)
                defer { lineClient.close() }
                lineClient.send("one\r\ntwo\nthr")
                usleep(50_000)
                lineClient.send("ee\n")
                let lines = lineClient.lines(3)

                let prefixClient = try TestClient(prefixed)
                defer { prefixClient.close() }
                let big = [UInt8](repeating: 0x41, count: 40_000)
                prefixClient.send([0, 3] + Array("abc".utf8) + [0x9C, 0x40] + big)
                let frames = prefixClient.read(5 + 2 + 40_000)

                let fixedClient = try TestClient(fixed)
                defer { fixedClient.close() }
                fixedClient.send("abcdef")
                usleep(50_000)
                fixedClient.send("gh")
                return (lines, frames, fixedClient.read(8))
            }
            #expect(lines == ["one", "two", "three"])
            #expect(frames.prefix(5) == [0, 3, 0x61, 0x62, 0x63])
            #expect(frames.count == 40_007 && frames[5] == 0x9C && frames[6] == 0x40 && frames.dropFirst(7).allSatisfy { $0 == 0x41 })
            #expect(blocks == Array("abcdefgh".utf8))
            // A plugin's answer that the framing cannot carry (7 bytes on a 5-byte endpoint) is its error,
            // counted, not sent.
            let fixedKV = try #require(addresses["fixedkv"])
            try await blocking {
                let client = try TestClient(fixedKV)
                defer { client.close() }
                client.send("COUNT")
            }
            #expect(await eventually { host.status.endpoints.first { $0.name == "fixedkv" }?.traffic.pluginErrors == 1 })
            #expect(host.status.endpoints.first { $0.name == "fixedkv" }?.traffic.messagesOut == 0)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func anOversizedMessageClosesOnlyItsConnection(backend: BackendKind) async throws {
        let yaml = """
        endpoints:
          - { name: line, listen: 127.0.0.1:0, framing: line, plugin: echo, limits: { max-message-bytes: 16 } }
        """
        try await withServer(yaml, backend: backend) { host, addresses in
            let address = try #require(addresses["line"])
            let (closed, otherAnswered) = try await blocking {
                let bad = try TestClient(address)
                let good = try TestClient(address)
                defer { bad.close(); good.close() }
                bad.send(String(repeating: "x", count: 100))
                good.send("fine\n")
                return (bad.closedByPeer(), good.lines(1) == ["fine"])
            }
            #expect(closed)
            #expect(otherAnswered)
            // The bad message is counted, then its connection closes: both land after the client saw the close.
            #expect(await eventually {
                let traffic = host.status.endpoints[0].traffic
                return traffic.badMessages == 1 && traffic.closeReasons["protocolError"] == 1
            }, "\(host.status.endpoints[0].traffic)")
            #expect(host.status.loopLag.count == 2)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aDropPolicyDropsForASlowReaderAndCountsItInsteadOfDisconnecting(backend: BackendKind) async throws {
        let yaml = """
        endpoints:
          - name: ticker
            listen: 127.0.0.1:0
            plugin: echo
            flow-control: { high-watermark: 16KiB, limit: 64KiB, policy: drop-newest, pause-reading: false }
        """
        try await withServer(yaml, backend: backend) { host, addresses in
            let address = try #require(addresses["ticker"])
            let client = try await blocking { () -> TestClient in
                let client = try TestClient(address, receiveBuffer: 4096)
                // 8 MiB sent, nothing read: more than the kernel's buffers on both sides can hold (the
                // server's send buffer alone may grow to 4 MiB), so the echoes pile up past the limit.
                let chunk = [UInt8](repeating: 0x5A, count: 65536)
                for _ in 0..<128 { client.send(chunk) }
                return client
            }
            defer { client.close() }
            #expect(await eventually { host.status.endpoints[0].traffic.bytesIn == 8 << 20 })
            let status = host.status.endpoints[0]
            #expect(status.traffic.drops > 0, "\(status.traffic)")
            #expect(status.open == 1, "dropped, not disconnected")
            #expect(status.flowPolicy == "drop-newest")
            #expect(status.traffic.closeReasons["slowConsumer"] == nil)
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func chatBroadcastsToTheRoomAndDeliversPrivateMessages(backend: BackendKind) async throws {
        let yaml = """
        endpoints:
          - { name: chat, listen: 127.0.0.1:0, framing: line, plugin: chat, settings: { room: hall } }
        """
        try await withServer(yaml, backend: backend) { host, addresses in
            let address = try #require(addresses["chat"])
            let result = try await blocking { () -> [[String]] in
                let alice = try TestClient(address)
                let bob = try TestClient(address)
                let carol = try TestClient(address)
                defer { alice.close(); bob.close(); carol.close() }
                for _ in 0..<500 where host.status.endpoints[0].open < 3 { usleep(10_000) }
                alice.send("/nick alice\n")
                let aliceNick = alice.lines(1)
                _ = bob.lines(1)
                _ = carol.lines(1)
                carol.send("/join side\n")
                let carolJoined = carol.lines(1)
                bob.send("hello hall\n")
                let aliceHeard = alice.lines(1)
                let bobHeard = bob.lines(1)
                bob.send("/msg alice psst\n")
                let privately = alice.lines(1)
                carol.send("/who\n")
                let who = carol.lines(1)
                bob.send("/msg nobody hi\n")
                bob.send("/dance\n")
                let errors = bob.lines(2)
                return [aliceNick, carolJoined, aliceHeard, bobHeard, privately, who, errors]
            }
            #expect(result[0].first?.hasSuffix(" is now alice") == true)
            #expect(result[1] == ["OK joined side (1 members)"])
            #expect(result[2].count == 1 && result[2][0].hasSuffix(": hello hall"))
            #expect(result[3] == result[2])
            #expect(result[4].count == 1 && result[4][0].hasSuffix(" (private): psst"))
            #expect(result[5] == ["OK side has 1 members"])
            #expect(result[6] == ["ERR no member nobody", "ERR unknown command; use /nick NAME, /join ROOM, /msg NAME TEXT or /who"])
        }
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func theKeyValueStoreAnswersItsLineProtocolAndSavesOnTheWorkPool(backend: BackendKind) async throws {
        let snapshot = "/tmp/keel-kv-\(getpid())-\(backend).snapshot"
        defer { unlink(snapshot) }
        let yaml = """
        endpoints:
          - name: kv
            listen: 127.0.0.1:0
            framing: line
            plugin: kv
            settings: { max-keys: 2, max-value-bytes: 10, snapshot-file: "\(snapshot)" }
        """
        try await withServer(yaml, backend: backend) { _, addresses in
            let address = try #require(addresses["kv"])
            let answers = try await blocking { () -> [String] in
                let client = try TestClient(address)
                defer { client.close() }
                let commands = ["SET a hello world", "SET a hi there", "GET a", "GET b", "SET b 12345678901", "SET b 2",
                                "SET c 3", "COUNT", "DEL b", "DEL b", "GET", "FLY", "SAVE"]
                client.send(commands.map { $0 + "\n" }.joined())
                return client.lines(commands.count)
            }
            #expect(answers == ["ERR value longer than 10 bytes", "OK", "VALUE hi there", "NOT_FOUND", "ERR value longer than 10 bytes",
                                "OK", "ERR full (2 keys)", "COUNT 2", "DELETED", "NOT_FOUND", "ERR missing key",
                                "ERR unknown command FLY; use SET, GET, DEL, COUNT or SAVE", "SAVED 1"])
        }
        let saved = try #require(readFile(snapshot))
        #expect(saved == "a\thi there\n")
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func shutdownAnswersTheMessageInProgressAndClosesStalledPeersAtTheDeadline(backend: BackendKind) async throws {
        let yaml = """
        endpoints:
          - { name: line, listen: 127.0.0.1:0, framing: line, plugin: echo }
        """
        let configuration = try ConfigurationLoader().parse(yaml, file: "test.yaml")
        let pool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let host = try await ServerHost(configuration: configuration, pool: pool)
        let address = try #require(host.listeners.first?.address)
        let (midway, idle, stalled, fresh) = try await blocking {
            (try TestClient(address), try TestClient(address), try TestClient(address), try TestClient(address))
        }
        defer { midway.close(); idle.close(); stalled.close(); fresh.close() }
        let idleAnswered = try await blocking { () -> [String] in
            idle.send("hello\n")
            return idle.lines(1)
        }
        #expect(idleAnswered == ["hello"])
        midway.send("half a li")
        stalled.send("never finished")
        #expect(await eventually { host.status.endpoints[0].open == 4 })
        try await Task.sleep(for: .milliseconds(100))  // both partial lines are in the server's buffers
        let start = ContinuousClock.now
        let shutdown = Task { await host.shutdown(deadline: .seconds(1)) }
        let (idleClosed, answer, midwayClosed, freshAnswer, freshClosed) = try await blocking {
            // Idle after a message: closed at once. In the middle of one: answered, then closed.
            // Connected but silent so far: its first message is answered, then it is closed.
            let idleClosed = idle.closedByPeer()
            midway.send("ne\n")
            let answer = midway.lines(1)
            let midwayClosed = midway.closedByPeer()
            fresh.send("first\n")
            return (idleClosed, answer, midwayClosed, fresh.lines(1), fresh.closedByPeer())
        }
        #expect(idleClosed)
        #expect(answer == ["half a line"])
        #expect(midwayClosed)
        #expect(freshAnswer == ["first"])
        #expect(freshClosed)
        let stalledClosed = try await blocking { stalled.closedByPeer() }
        #expect(stalledClosed)
        #expect(await shutdown.value == 1)
        #expect(ContinuousClock.now - start >= .milliseconds(900))
    }
}

/// One HTTP/1.1 GET with `Connection: close`: the status code and the body.
func httpGet(_ address: SocketAddress, _ path: String) throws -> (status: Int, body: String) {
    let client = try TestClient(address)
    defer { client.close() }
    client.send("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    let bytes = client.read(Int.max)
    let head = String(decoding: bytes.prefix(64), as: UTF8.self)
    let status = head.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) } ?? 0
    let separator = Array("\r\n\r\n".utf8)
    let end = (0...max(0, bytes.count - 4)).first { Array(bytes[$0..<min($0 + 4, bytes.count)]) == separator }
    return (status, end.map { String(decoding: bytes[($0 + 4)...], as: UTF8.self) } ?? "")
}

/// The whole file as text, or nil.
func readFile(_ path: String) -> String? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var scratch = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&scratch, 1, scratch.count, file)
        bytes += scratch[0..<n]
        if n < scratch.count { break }
    }
    return String(decoding: bytes, as: UTF8.self)
}

@Suite("keel-server reload")
struct ServerReloadTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aReloadAddsRemovesAndReplacesEndpointsWithoutDroppingAConnection(backend: BackendKind) async throws {
        let first = """
        endpoints:
          - { name: keep, listen: 127.0.0.1:0, framing: line, plugin: echo }
          - { name: gone, listen: 127.0.0.1:0, framing: line, plugin: echo }
          - { name: change, listen: 127.0.0.1:0, framing: line, plugin: echo }
        """
        let loader = ConfigurationLoader()
        let pool = try IOPool(configuration: .init(threadCount: 2, backend: backend, workPoolThreadCount: 1))
        defer { pool.shutdown() }
        let host = try await ServerHost(configuration: try loader.parse(first, file: "first.yaml"), pool: pool)
        var addresses: [String: SocketAddress] = [:]
        for listener in host.listeners { addresses[listener.endpoint] = listener.address }
        let keep = try #require(addresses["keep"]), gone = try #require(addresses["gone"]), change = try #require(addresses["change"])
        let (keepClient, goneClient, changeClient) = try await blocking { (try TestClient(keep), try TestClient(gone), try TestClient(change)) }
        defer { keepClient.close(); goneClient.close(); changeClient.close() }
        // Each connection is the server's before the reload (one still in the kernel's backlog would go
        // with its retired listener).
        #expect(await eventually { host.status.endpoints.allSatisfy { $0.open == 1 } })

        let second = """
        endpoints:
          - { name: keep, listen: 127.0.0.1:0, framing: line, plugin: echo }
          - { name: change, listen: 127.0.0.1:\(change.port), framing: raw, plugin: echo }
          - { name: new, listen: 127.0.0.1:0, framing: line, plugin: echo }
        """
        let summary = try await host.reload(try loader.parse(second, file: "second.yaml"))
        #expect(summary.unchanged == ["keep"])
        #expect(summary.replaced == ["change"])
        #expect(summary.added == ["new"])
        #expect(summary.removed == ["gone"])
        let added = try #require(host.listeners.first { $0.endpoint == "new" }?.address)

        let answers = try await blocking { () -> [[String]] in
            keepClient.send("still here\n")
            goneClient.send("old endpoint\n")
            changeClient.send("old framing\n")
            let fresh = try TestClient(added)
            defer { fresh.close() }
            fresh.send("new endpoint\n")
            return [keepClient.lines(1), goneClient.lines(1), changeClient.lines(1), fresh.lines(1)]
        }
        #expect(answers == [["still here"], ["old endpoint"], ["old framing"], ["new endpoint"]])
        let (goneRefused, rawAnswer) = try await blocking { () -> (Bool, [UInt8]) in
            let refused = (try? TestClient(gone)) == nil
            let replaced = try TestClient(change)
            defer { replaced.close() }
            replaced.send("no newline")
            return (refused, replaced.read(10))
        }
        #expect(goneRefused)
        #expect(rawAnswer == Array("no newline".utf8))
        #expect(Set(host.retiringEndpoints) == ["gone", "change"])
        goneClient.close()
        changeClient.close()
        #expect(await eventually { host.retiringEndpoints.isEmpty })
        await host.shutdown(deadline: .seconds(1))
    }

    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func aReloadThatCannotStartAnEndpointChangesNothing(backend: BackendKind) async throws {
        // A port held without SO_REUSEPORT: the new endpoint cannot bind it.
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        let held = try SocketAddress(host: "127.0.0.1", port: 0)
        _ = held.withSockAddr { bind(holder, $0, $1) }
        listen(holder, 1)
        var bound = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(holder, $0, &length) } }
        let heldPort = UInt16(bigEndian: bound.sin_port)

        try await withServer("endpoints:\n  - { name: a, listen: 127.0.0.1:0, plugin: echo }\n", backend: backend) { host, addresses in
            let next = try ConfigurationLoader().parse("""
            endpoints:
              - { name: a, listen: 127.0.0.1:0, plugin: echo, limits: { max-connections: 5 } }
              - { name: b, listen: 127.0.0.1:\(heldPort), plugin: echo }
            """, file: "next.yaml")
            await #expect(throws: EndpointStartError.self) { try await host.reload(next) }
            #expect(host.configuration.endpoints.map(\.name) == ["a"])
            #expect(host.configuration.endpoints[0].limits.maximumConnections == 100_000)
            let address = try #require(addresses["a"])
            let echoed = try await blocking { () -> [UInt8] in
                let client = try TestClient(address)
                defer { client.close() }
                client.send("ok")
                return client.read(2)
            }
            #expect(echoed == Array("ok".utf8))
        }
    }
}
