// The Hummingbird WebSocket echo server Keel is compared against: Hummingbird 2's HTTP/1 server with
// the WebSocket upgrade (hummingbird-websocket), one event loop thread, echoing each whole message
// (`inbound.messages(maxSize:)`) back as text or binary. No compression, no automatic pings, frames
// up to 16 MiB (as keel-ws-echo).
//
//   hummingbird-ws-echo-server [port] [threads]      prints "listening on 127.0.0.1:PORT"
import Glibc
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOPosix

let arguments = CommandLine.arguments
let port = arguments.count > 1 ? Int(arguments[1]) ?? 7007 : 7007
let threads = arguments.count > 2 ? Int(arguments[2]) ?? 1 : 1
var logger = Logger(label: "hummingbird-ws-echo-server")
logger.logLevel = .warning

let app = Application(
    router: Router(),
    server: .http1WebSocketUpgrade(configuration: .init(ws: .init(maxFrameSize: 16 << 20, autoPing: .disabled))) { _, _, _ in
        .upgrade([:]) { inbound, outbound, _ in
            for try await message in inbound.messages(maxSize: 16 << 20) {
                switch message {
                case .binary(let buffer): try await outbound.write(.binary(buffer))
                case .text(let text): try await outbound.write(.text(text))
                }
            }
        }
    },
    configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: port)),
    onServerRunning: { channel in
        print("listening on 127.0.0.1:\(channel.localAddress?.port ?? port)")
        fflush(nil)
    },
    eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup(numberOfThreads: threads)),
    logger: logger
)
try await app.runService()
