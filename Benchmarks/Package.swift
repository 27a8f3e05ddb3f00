// swift-tools-version:6.2
// Comparison servers for Keel's benchmarks. A separate package: the Keel library never depends on SwiftNIO.
import PackageDescription

let package = Package(
    name: "KeelBenchmarks",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
    ],
    targets: [
        .executableTarget(
            name: "nio-echo-server",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
