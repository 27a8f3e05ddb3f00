// swift-tools-version:6.2
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .treatAllWarnings(as: .error),
]

let package = Package(
    name: "Keel",
    products: [
        .library(name: "KeelSystem", targets: ["KeelSystem"]),
        .library(name: "KeelBuffers", targets: ["KeelBuffers"]),
        .library(name: "KeelEngine", targets: ["KeelEngine"]),
        .library(name: "KeelSockets", targets: ["KeelSockets"]),
        .library(name: "KeelFraming", targets: ["KeelFraming"]),
        .library(name: "KeelTLS", targets: ["KeelTLS"]),
        .library(name: "KeelHTTP", targets: ["KeelHTTP"]),
        .library(name: "KeelWebSocket", targets: ["KeelWebSocket"]),
        .library(name: "KeelProxyProtocol", targets: ["KeelProxyProtocol"]),
        .library(name: "KeelServer", targets: ["KeelServer"]),
        .executable(name: "keel-server", targets: ["keel-server"]),
        // Example keel-server plugins, loaded at run time through the C ABI (Sources/CKeelPluginABI).
        .library(name: "KeelExamplePluginC", type: .dynamic, targets: ["CountingEchoC"]),
        .library(name: "KeelExamplePluginSwift", type: .dynamic, targets: ["ReversingSwift"]),
        .library(name: "KeelGateway", targets: ["KeelGateway"]),
        .library(name: "KeelCompression", targets: ["KeelCompression"]),
        .library(name: "KeelPubSub", targets: ["KeelPubSub"]),
        .executable(name: "keel-gateway", targets: ["keel-gateway"]),
        .executable(name: "keel-pubsub", targets: ["keel-pubsub"]),
        .executable(name: "keel-echo", targets: ["keel-echo"]),
        .executable(name: "keel-tls-echo", targets: ["keel-tls-echo"]),
        .executable(name: "keel-async-echo", targets: ["keel-async-echo"]),
        .executable(name: "keel-echo-client", targets: ["keel-echo-client"]),
        .executable(name: "keel-chat", targets: ["keel-chat"]),
        .executable(name: "keel-udp-echo", targets: ["keel-udp-echo"]),
        .executable(name: "keel-bench", targets: ["keel-bench"]),
        .executable(name: "keel-ws-echo", targets: ["keel-ws-echo"]),
        .executable(name: "keel-demo", targets: ["keel-demo"]),
        .executable(name: "keel-microbench", targets: ["keel-microbench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
    ],
    targets: [
        // Layer 1: the kernel's UAPI headers and raw syscalls, as static inline C.
        .target(name: "CKeelLinux"),
        // Layer 2: the one place that calls libc. Typed errors, EINTR retried, EAGAIN classified.
        .target(
            name: "KeelSystem",
            dependencies: ["CKeelLinux", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        // Layer 2': pooled I/O buffers. Imports nothing else of Keel.
        .target(name: "KeelBuffers", dependencies: ["CKeelLinux"], swiftSettings: strict),
        // Layer 3: I/O threads, io_uring and epoll backends, timers, work pool.
        .target(
            name: "KeelEngine",
            dependencies: [
                "CKeelLinux", "KeelSystem", "KeelBuffers",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // Layer 4: TCP servers, connections and clients.
        .target(
            name: "KeelSockets",
            dependencies: [
                "CKeelLinux", "KeelSystem", "KeelBuffers", "KeelEngine",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict
        ),
        // TLS: the system's OpenSSL 3 (Debian's libssl-dev) through a small C module, and the filter.
        .target(
            name: "CKeelOpenSSL",
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        .target(
            name: "KeelTLS",
            dependencies: [
                "CKeelOpenSSL", "KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelTLSTests",
            dependencies: ["KeelTLS", "KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem", "KeelTestSupport", "KeelWebSocket", "KeelHTTP", "KeelProxyProtocol"],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "keel-ws-echo",
            dependencies: [
                "KeelWebSocket", "KeelHTTP", "KeelTLS", "KeelSockets", "KeelCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "keel-tls-echo",
            dependencies: [
                "KeelTLS", "KeelSockets", "KeelEngine", "KeelBuffers", "KeelCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        // HTTP/1.1: a strict incremental parser and writer (swift-http-types for heads), the server filter.
        .target(
            name: "KeelHTTP",
            dependencies: ["KeelBuffers", "KeelSockets", .product(name: "HTTPTypes", package: "swift-http-types")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelHTTPTests",
            dependencies: [
                "KeelHTTP", "KeelBuffers", "KeelSockets", "KeelEngine", "KeelTestSupport",
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: strict
        ),
        // WebSockets (RFC 6455): frames, messages, the opening handshake; SHA-1 and base64 from OpenSSL;
        // permessage-deflate (RFC 7692) on the system's zlib (Debian's zlib1g-dev).
        .target(name: "CKeelZlib", linkerSettings: [.linkedLibrary("z")]),
        .target(
            name: "KeelWebSocket",
            dependencies: [
                "KeelHTTP", "KeelSockets", "KeelBuffers", "CKeelOpenSSL", "CKeelZlib",
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelWebSocketTests",
            dependencies: [
                "KeelWebSocket", "KeelHTTP", "KeelSockets", "KeelBuffers", "KeelTestSupport", "KeelEngine", "KeelSystem",
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: strict
        ),
        // The PROXY protocol (v1 and v2) as a listener filter, and its sender for connectors.
        .target(
            name: "KeelProxyProtocol",
            dependencies: ["KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelProxyProtocolTests",
            dependencies: ["KeelProxyProtocol", "KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem", "KeelTestSupport"],
            swiftSettings: strict
        ),
        // keel-server: endpoints from a YAML file (Yams: every node carries its line), plugins, the admin listener.
        .target(
            name: "KeelServer",
            dependencies: [
                "CKeelPluginABI", "KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem", "KeelFraming", "KeelTLS", "KeelHTTP",
                "KeelWebSocket", "KeelProxyProtocol",
                .product(name: "Yams", package: "Yams"), .product(name: "Logging", package: "swift-log"),
                .product(name: "HTTPTypes", package: "swift-http-types"), .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // The C ABI of external keel-server plugins (header only), and the two example plugins.
        .target(name: "CKeelPluginABI"),
        .target(name: "CountingEchoC", dependencies: ["CKeelPluginABI"], path: "Examples/Plugins/CountingEchoC"),
        .target(name: "ReversingSwift", dependencies: ["CKeelPluginABI"], path: "Examples/Plugins/ReversingSwift",
                swiftSettings: strict),
        .executableTarget(
            name: "keel-server",
            dependencies: [
                "KeelServer", "KeelEngine", "KeelBuffers", "KeelSystem", "KeelCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelServerTests",
            dependencies: ["KeelServer", "KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem", "KeelTestSupport", "KeelWebSocket"],
            swiftSettings: strict
        ),
        // keel-pubsub's protocol and topic table (the server comes next).
        // keel-pubsub: topics, the line and binary protocols, per-subscriber queues with topic policies.
        .target(
            name: "KeelPubSub",
            dependencies: [
                "KeelBuffers", "KeelEngine", "KeelSockets", "KeelSystem", "KeelFraming", "KeelHTTP", "KeelWebSocket",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "keel-pubsub",
            dependencies: [
                "KeelPubSub", "KeelSockets", "KeelEngine", "KeelSystem", "KeelCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelPubSubTests",
            dependencies: ["KeelPubSub", "KeelBuffers", "KeelEngine", "KeelSockets", "KeelSystem", "KeelTestSupport"],
            swiftSettings: strict
        ),
        // A deflate filter for any connection's stack, on the system's zlib (CKeelZlib).
        .target(
            name: "KeelCompression",
            dependencies: ["CKeelZlib", "KeelSockets", "KeelBuffers"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelCompressionTests",
            dependencies: ["KeelCompression", "KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem", "KeelTLS", "KeelTestSupport"],
            swiftSettings: strict
        ),
        // keel-gateway: a TCP relay from a listener to back-ends, flow-controlled both ways.
        .target(
            name: "KeelGateway",
            dependencies: [
                "KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem", "KeelProxyProtocol",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelGatewayTests",
            dependencies: ["KeelGateway", "KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem", "KeelProxyProtocol", "KeelTLS", "KeelTestSupport"],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "keel-gateway",
            dependencies: [
                "KeelGateway", "KeelSockets", "KeelEngine", "KeelSystem", "KeelTLS", "KeelCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        // Layer 5: framing over pooled buffers (no sockets, so it runs anywhere).
        .target(name: "KeelFraming", dependencies: ["KeelBuffers"], swiftSettings: strict),
        .testTarget(
            name: "KeelFramingTests",
            dependencies: ["KeelFraming", "KeelBuffers", "KeelTestSupport"],
            swiftSettings: strict
        ),
        // Shared command-line options and signal handling of the example servers.
        .target(
            name: "KeelCommandLine",
            dependencies: [
                "KeelEngine", "KeelBuffers", "KeelSystem", "KeelSockets", "KeelTLS", "KeelProxyProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "keel-echo",
            dependencies: [
                "KeelSockets", "KeelEngine", "KeelBuffers", "KeelCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "keel-async-echo",
            dependencies: [
                "KeelSockets", "KeelEngine", "KeelCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "keel-echo-client",
            dependencies: [
                "KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem", "KeelCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        // The chat example's logic, as a library so it can be tested.
        .target(
            name: "KeelChat",
            dependencies: ["KeelSockets", "KeelEngine", "KeelBuffers", "KeelFraming", "KeelSystem", "KeelWebSocket", "KeelHTTP"],
            path: "Examples/KeelChat",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "keel-chat",
            dependencies: [
                "KeelChat", "KeelEngine", "KeelCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelChatTests",
            dependencies: ["KeelChat", "KeelSockets", "KeelEngine", "KeelSystem", "KeelTestSupport", "KeelWebSocket"],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "keel-udp-echo",
            dependencies: [
                "KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem", "KeelCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        // Layer 6: the load and soak tool (library + thin command line).
        .target(
            name: "KeelBench",
            dependencies: [
                "CKeelLinux", "KeelSockets", "KeelEngine", "KeelBuffers", "KeelSystem", "KeelWebSocket", "KeelHTTP", "KeelFraming",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "keel-bench",
            dependencies: [
                "KeelBench", "KeelEngine", "KeelSystem", "KeelCommandLine", "KeelSockets", "KeelProxyProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(name: "keel-demo", dependencies: ["KeelEngine"], swiftSettings: strict),
        .executableTarget(
            name: "keel-microbench",
            dependencies: ["KeelEngine", "KeelBuffers", "KeelSystem"],
            swiftSettings: strict
        ),
        // Test-only: counts malloc calls per thread by interposing malloc in the test executable.
        .target(name: "CKeelAllocationCounter", path: "Tests/CKeelAllocationCounter"),
        .target(
            name: "KeelTestSupport",
            dependencies: ["CKeelAllocationCounter", "KeelEngine", "KeelSystem", "KeelSockets", "KeelBuffers"],
            path: "Tests/KeelTestSupport",
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelBuffersTests",
            dependencies: ["KeelBuffers", "KeelTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelSocketsTests",
            dependencies: ["KeelSockets", "KeelEngine", "KeelSystem", "KeelBuffers", "KeelTestSupport", "CKeelLinux",
                           .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeelEngineTests",
            dependencies: ["KeelEngine", "KeelSystem", "KeelBuffers", "KeelTestSupport", "CKeelLinux"],
            swiftSettings: strict
        ),
    ]
)
