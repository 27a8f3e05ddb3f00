// The SwiftNIO UDP echo server Keel's keel-udp-echo is compared against, set up like SwiftNIO's own
// NIOUDPEchoServer example: write each datagram back on channelRead, flush on channelReadComplete
// (NIO then sends the pending datagrams with sendmmsg), up to 16 reads per wake-up.
//
//   nio-udp-echo-server [port]      prints "listening on 127.0.0.1:PORT"
import Glibc
import NIOCore
import NIOPosix

final class UDPEchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A datagram socket outlives one peer's ICMP error: keep serving.
    }
}

let arguments = CommandLine.arguments
let port = arguments.count > 1 ? Int(arguments[1]) ?? 7007 : 7007
let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let bootstrap = DatagramBootstrap(group: group)
    .channelOption(.socketOption(.so_reuseaddr), value: 1)
    .channelOption(.maxMessagesPerRead, value: 16)
    .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(UDPEchoHandler())
        }
    }
let channel = try bootstrap.bind(host: "127.0.0.1", port: port).wait()
print("listening on 127.0.0.1:\(channel.localAddress?.port ?? port)")
fflush(nil)
try channel.closeFuture.wait()
