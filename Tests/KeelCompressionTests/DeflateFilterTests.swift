import Glibc
import KeelBuffers
import KeelCompression
import KeelEngine
import KeelSockets
import KeelSystem
import KeelTLS
import KeelTestSupport
import Testing

/// Records what reaches the handler: the bytes of each delivery, write completions, the close.
struct DeliveryRecorder: TCPConnectionHandler {
    let deliveries: Collector<[UInt8]>
    let completed: Collector<Int>

    mutating func connectionReceived(_ buffer: consuming IOBuffer, on connection: TCPConnection) {
        deliveries.add(buffer.readableByteArray)
    }

    mutating func connectionWriteCompleted(_ connection: TCPConnection, bytes: Int) { completed.add(bytes) }
}

/// Writes `bytes` in pooled buffers.
func write(_ bytes: [UInt8], to connection: TCPConnection) {
    var offset = 0
    while offset < bytes.count {
        var buffer = try! connection.thread.bufferPool.acquire()
        let count = min(buffer.writableBytes, bytes.count - offset)
        buffer.append(contentsOf: bytes[offset..<(offset + count)])
        offset += count
        connection.write(buffer)
    }
}

/// A connection in memory with a deflate filter and a recorder.
func deflating(_ configuration: DeflateConfiguration = .init()) -> (EmbeddedConnection<DeliveryRecorder>, Collector<[UInt8]>, Collector<Int>) {
    let deliveries = Collector<[UInt8]>()
    let completed = Collector<Int>()
    let test = EmbeddedConnection(handler: DeliveryRecorder(deliveries: deliveries, completed: completed),
                                  options: .init(makeFilters: { _ in [DeflateFilter(configuration: configuration)] }))
    return (test, deliveries, completed)
}

@Suite("Deflate filter in memory")
struct DeflateFilterTests {
    @Test func eachWriteCanBeInflatedAsSoonAsItArrives() {
        let (sender, _, _) = deflating()
        let (receiver, delivered, _) = deflating()
        var originalTotal = 0
        var compressedTotal = 0
        for i in 0..<20 {
            let message = Array("{\"sensor\": \(i % 3), \"reading\": \(1000 + i), \"unit\": \"kPa\", \"status\": \"nominal\"}\n".utf8)
            sender.withConnection { write(message, to: $0) }
            let wire = sender.takeWritten()
            originalTotal += message.count
            compressedTotal += wire.count
            receiver.receive(wire)  // this write's bytes alone: the message must come out whole, now
            #expect(delivered.snapshot.flatMap { $0 }.suffix(message.count).elementsEqual(message), "message \(i) arrived whole")
        }
        #expect(delivered.snapshot.flatMap { $0 }.count == originalTotal)
        #expect(compressedTotal * 2 < originalTotal, "history carried over: \(compressedTotal) bytes for \(originalTotal)")
        #expect(sender.finish().isClean)
        #expect(receiver.finish().isClean)
    }

    @Test func largeWritesSpanManyBuffersBothWays() {
        let (sender, _, _) = deflating()
        let (receiver, delivered, _) = deflating()
        var state: UInt64 = 42
        let payload = (0..<(300 * 1024)).map { _ -> UInt8 in  // barely compressible
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 40) & 0x3F
        }
        sender.withConnection { write(payload, to: $0) }
        let wire = sender.takeWritten()
        #expect(wire.count > 16 * 1024, "the compressed form spans several buffers")
        // In odd-sized pieces, as TCP may cut it.
        receiver.receive(chunks: stride(from: 0, to: wire.count, by: 7_001).map { Array(wire[$0..<min($0 + 7_001, wire.count)]) })
        let intact = delivered.snapshot.flatMap { $0 } == payload
        #expect(intact, "300 KiB came back byte for byte")
        #expect(sender.finish().isClean)
        #expect(receiver.finish().isClean)
    }

    @Test func writeCompletionsCountTheHandlersBytesOnceAWriteIsWhollySent() {
        let (sender, _, completed) = deflating()
        sender.sendWindow = 0
        let message = [UInt8](repeating: 0x61, count: 1000)
        sender.withConnection {
            write(message, to: $0)
            write(message, to: $0)
        }
        let compressedSize = sender.connection.queuedWriteBytes
        #expect(compressedSize < 2000, "1,000 a's compress")
        sender.sendWindow = 1  // one compressed byte out: no write is whole yet
        #expect(completed.snapshot.reduce(0, +) == 0)
        sender.sendWindow = .max
        #expect(completed.snapshot.reduce(0, +) == 2000, "reported in the handler's own bytes")
        #expect(sender.finish().isClean)
    }

    @Test func aCompressionBombClosesTheConnectionWithATypedReason() {
        // 64 MiB of zeros, compressed by a sender in one flush each 16 KiB: a few kilobytes on the wire.
        let (sender, _, _) = deflating()
        let zeros = [UInt8](repeating: 0, count: 16 * 1024)
        var wire: [UInt8] = []
        for _ in 0..<(4 * 1024) {
            sender.withConnection { write(zeros, to: $0) }
            wire += sender.takeWritten()
        }
        #expect(wire.count < 200_000)
        let configuration = DeflateConfiguration(maximumExpansion: 100, expansionAllowance: 1 << 20)
        let (receiver, delivered, _) = deflating(configuration)
        receiver.receive(chunks: stride(from: 0, to: wire.count, by: 16 * 1024).map { Array(wire[$0..<min($0 + 16 * 1024, wire.count)]) })
        #expect(receiver.closeReason?.code == .compressionBomb, "\(String(describing: receiver.closeReason))")
        #expect(receiver.closedAbortively)
        let inflated = delivered.snapshot.reduce(0) { $0 + $1.count }
        #expect(inflated <= 16 * 1024 * 100 + (1 << 20), "stopped at the limit, not after 64 MiB (\(inflated) bytes)")
        #expect(sender.finish().isClean)
        #expect(receiver.finish().isClean, "no buffer held after the bomb")
    }

    @Test func bytesThatAreNotDeflateCloseTheConnection() {
        let (receiver, delivered, _) = deflating()
        receiver.receive([0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x13, 0x37, 0x42])
        #expect(receiver.closeReason?.code == .compressionCorrupt, "\(String(describing: receiver.closeReason))")
        #expect(delivered.snapshot.isEmpty)
        #expect(receiver.finish().isClean)
    }
}
