// The SwiftNIO echo server Keel is compared against, set up like SwiftNIO's own NIOEchoServer example
// (write on channelRead, flush on channelReadComplete, back-pressure handler, TCP_NODELAY). Given a
// certificate and key it speaks TLS, with NIOSSLServerHandler first in the pipeline (compare-tls.sh).
//
//   nio-echo-server [port] [threads] [CERT KEY]      prints "listening on 127.0.0.1:PORT"
import Glibc
import NIOCore
import NIOPosix
import NIOSSL

final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

let arguments = CommandLine.arguments
let port = arguments.count > 1 ? Int(arguments[1]) ?? 7007 : 7007
let threads = arguments.count > 2 ? Int(arguments[2]) ?? 1 : 1
let sslContext: NIOSSLContext? = try arguments.count > 4 ? NIOSSLContext(configuration: .makeServerConfiguration(
    certificateChain: try NIOSSLCertificate.fromPEMFile(arguments[3]).map { .certificate($0) },
    privateKey: .privateKey(try NIOSSLPrivateKey(file: arguments[4], format: .pem)))) : nil
let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
let bootstrap = ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 4096)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
            if let sslContext { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext)) }
            try channel.pipeline.syncOperations.addHandler(BackPressureHandler())
            try channel.pipeline.syncOperations.addHandler(EchoHandler())
        }
    }
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelOption(.maxMessagesPerRead, value: 16)
    .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator())
let channel = try bootstrap.bind(host: "127.0.0.1", port: port).wait()
print("listening on 127.0.0.1:\(channel.localAddress?.port ?? port)")
fflush(nil)
try channel.closeFuture.wait()
