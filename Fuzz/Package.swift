// swift-tools-version:6.2
// libFuzzer targets, one per parser. Built apart from the main package because every target (and
// Keel's own, which they import) is compiled with -sanitize=fuzzer,address: see run.sh. Each is an
// executable compiled as a library (-parse-as-library) whose entry hands control to libFuzzer.
import PackageDescription

let package = Package(
    name: "KeelFuzz",
    dependencies: [.package(name: "Keel", path: "..")],
    targets: [
        .target(name: "FuzzSupport", dependencies: [.product(name: "KeelFraming", package: "Keel"),
                                                    .product(name: "KeelBuffers", package: "Keel")]),
        .executableTarget(name: "FuzzLineDecoder", dependencies: ["FuzzSupport"]),
        .executableTarget(name: "FuzzLengthPrefixedDecoder", dependencies: ["FuzzSupport"]),
        .executableTarget(name: "FuzzFixedSizeDecoder", dependencies: ["FuzzSupport"]),
        .executableTarget(name: "FuzzSocketAddress", dependencies: ["FuzzSupport", .product(name: "KeelSystem", package: "Keel")]),
        .executableTarget(name: "FuzzHTTPRequest", dependencies: ["FuzzSupport", .product(name: "KeelHTTP", package: "Keel")]),
        .executableTarget(name: "FuzzWebSocketServer", dependencies: [
            "FuzzSupport", .product(name: "KeelWebSocket", package: "Keel"), .product(name: "KeelHTTP", package: "Keel"),
            .product(name: "KeelSockets", package: "Keel"), .product(name: "KeelBuffers", package: "Keel"),
        ]),
        .executableTarget(name: "FuzzProxyProtocol", dependencies: [
            "FuzzSupport", .product(name: "KeelProxyProtocol", package: "Keel"), .product(name: "KeelSockets", package: "Keel"),
            .product(name: "KeelBuffers", package: "Keel"),
        ]),
        .executableTarget(name: "FuzzDeflateStream", dependencies: [
            "FuzzSupport", .product(name: "KeelCompression", package: "Keel"), .product(name: "KeelSockets", package: "Keel"),
            .product(name: "KeelBuffers", package: "Keel"),
        ]),
        .executableTarget(name: "FuzzPubSubProtocol", dependencies: [
            "FuzzSupport", .product(name: "KeelPubSub", package: "Keel"),
        ]),
        .executableTarget(name: "FuzzTLSServer", dependencies: [
            "FuzzSupport", .product(name: "KeelTLS", package: "Keel"), .product(name: "KeelSockets", package: "Keel"),
            .product(name: "KeelBuffers", package: "Keel"),
        ]),
    ]
)
