import Glibc
import KeelEngine
import KeelServer
import KeelSystem
import KeelTestSupport
import Synchronization
import Testing

/// Debian's chromium, which .ci/run installs.
let chromium = "/usr/bin/chromium"

/// Runs headless Chromium on `url` with `arguments` (its own script runs for `budget` ms of virtual
/// time). - Returns: what it wrote to standard output.
func headlessChromium(_ url: String, _ arguments: String, budgetMilliseconds budget: Int = 3000) -> String {
    let output = "/tmp/keel-chromium-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).out"
    defer { unlink(output) }
    let command = "timeout 90 \(chromium) --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage "
        + "--user-data-dir=\(output).profile --virtual-time-budget=\(budget) \(arguments) '\(url)' >\(output) 2>/dev/null; rm -rf \(output).profile"
    _ = system(command)
    return readFile(output) ?? ""
}

// Not in sanitizer builds (malloc not interposed): a chromium beside the instrumented suite starved
// unrelated timing-bound tests. Plain builds run it on CI.
@Suite("keel-server status page", .enabled(if: access(chromium, X_OK) == 0, "chromium is not installed (.ci/run installs it)"),
       .enabled(if: AllocationCounter.isActive, "a sanitizer build"))
struct StatusPageTests {
    @Test(.timeLimit(.minutes(3)))
    func thePageShowsTheServersCountersUnderLoadInHeadlessChromium() async throws {
        let yaml = """
        endpoints:
          - { name: echo, listen: 127.0.0.1:0, plugin: echo }
          - { name: kv, listen: 127.0.0.1:0, framing: line, plugin: kv }
        admin: { listen: 127.0.0.1:0 }
        """
        let backend = backendsUnderTest.first ?? .epoll
        try await withServer(yaml, backend: backend) { host, addresses in
            let echo = try #require(addresses["echo"])
            let admin = try #require(addresses["admin"])
            let held = try await blocking { try (0..<3).map { _ in try TestClient(echo) } }
            defer { held.forEach { $0.close() } }
            // Load: one client echoing as fast as it can while the page polls.
            let stop = Atomic<Bool>(false)
            let load = Task.detached {
                try await blocking { () -> Int in
                    let client = try TestClient(echo)
                    defer { client.close() }
                    var echoed = 0
                    while !stop.load(ordering: .relaxed) {
                        client.send("load")
                        guard client.read(4).count == 4 else { break }
                        echoed += 1
                    }
                    return echoed
                }
            }
            #expect(await eventually { host.status.endpoints[0].open == 4 && host.status.endpoints[0].traffic.messagesIn > 100 })
            // Chromium runs on a thread of its own: a blocked runtime thread would stall other tests' tasks.
            let dom = try await blocking { headlessChromium("http://\(admin)/", "--dump-dom") }
            let screenshotDirectory = ".build/artifacts"
            mkdir(".build", 0o755)
            mkdir(screenshotDirectory, 0o755)
            _ = try await blocking {
                headlessChromium("http://\(admin)/", "--window-size=1280,420 --screenshot=\(screenshotDirectory)/status-page.png")
            }
            stop.store(true, ordering: .relaxed)
            let echoed = try await load.value
            let status = host.status.endpoints[0]

            // The echo endpoint's row, as the page's script filled it in.
            let row = try #require(dom.split(separator: "<tr id=\"ep-echo\"").dropFirst().first.map(String.init), "no echo row in:\n\(dom.prefix(2000))")
            let cells = row.split(separator: "<td>").dropFirst().map { $0.prefix { $0 != "<" } }.map(String.init)
            #expect(cells.count >= 11, "\(cells)")
            #expect(cells.first == "echo")
            #expect(cells[4] == "4 / 100.0k", "open / limit: \(cells[4])")  // 3 held + the load client
            #expect(cells[5] == "4", "accepted: \(cells[5])")
            #expect(cells[6] == "0", "refused: \(cells[6])")
            let shownIn = Double(cells[7].filter { $0.isNumber || $0 == "." }) ?? 0
            #expect(shownIn > 0, "msg/s in under load: \(cells[7])")
            let messagesIn = row.split(separator: "data-messages-in=\"").dropFirst().first.flatMap { Int($0.prefix { $0 != "\"" }) } ?? -1
            #expect(messagesIn > 0 && messagesIn <= status.traffic.messagesIn, "page \(messagesIn), server \(status.traffic.messagesIn)")
            #expect(echoed > 0)
            #expect(dom.contains("<tr id=\"ep-kv\""))
            #expect(access("\(screenshotDirectory)/status-page.png", R_OK) == 0, "the screenshot is kept as a test artifact")
        }
    }
}
