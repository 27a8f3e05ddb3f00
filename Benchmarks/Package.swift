// swift-tools-version:6.2
// Keel's benchmarks: comparison servers (SwiftNIO) and allocation benchmarks (ordo-one/benchmark).
// A separate package: the Keel library never depends on SwiftNIO or the benchmark framework.
import PackageDescription

let package = Package(
    name: "KeelBenchmarks",
    dependencies: [
        .package(name: "Keel", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "nio-echo-server",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // The UDP echo server keel-udp-echo is compared against (compare-udp.sh).
        .executableTarget(
            name: "nio-udp-echo-server",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // The WebSocket echo servers keel-ws-echo is compared against (compare-ws.sh).
        .executableTarget(
            name: "nio-ws-echo-server",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "hummingbird-ws-echo-server",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // Allocations per message, connection, datagram and timer operation; thresholds in Thresholds/.
        .executableTarget(
            name: "KeelAllocations",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "KeelBuffers", package: "Keel"),
                .product(name: "KeelEngine", package: "Keel"),
                .product(name: "KeelSockets", package: "Keel"),
                .product(name: "KeelTLS", package: "Keel"),
                .product(name: "KeelHTTP", package: "Keel"),
                .product(name: "KeelWebSocket", package: "Keel"),
                .product(name: "KeelProxyProtocol", package: "Keel"),
            ],
            path: "Benchmarks/KeelAllocations",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
