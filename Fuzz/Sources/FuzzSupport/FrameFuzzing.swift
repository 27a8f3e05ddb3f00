import KeelBuffers
import KeelFraming

/// The frame decoders' fuzzing property: for any input and any way of splitting it into reads, the
/// accumulator yields the same frames (or the same typed error) as for the input in one piece, never
/// traps, and returns every buffer to the pool.
///
/// Input layout: byte 0 picks the decoder's settings, byte 1 the read size (1...64 bytes, so frames
/// span several 64-byte buffers), the rest is the stream.
public enum FrameFuzzing {
    /// A small pool, so frames longer than one buffer are common.
    nonisolated(unsafe) static let pool = BufferPool(configuration: .init(bufferSize: 64, buffersPerSlab: 64, maximumBytes: 64 * 1024))

    /// Runs the property for the decoder `makeDecoder` builds from the settings byte.
    public static func check<D: FrameDecoder>(_ data: UnsafeRawBufferPointer, _ makeDecoder: (UInt8) -> D) {
        guard data.count >= 2 else { return }
        let settings = data[0]
        let readSize = Int(data[1] % 64) + 1
        let stream = Array(data[2...])
        let whole = decode(stream, readSize: 64, decoder: makeDecoder(settings))
        let split = decode(stream, readSize: readSize, decoder: makeDecoder(settings))
        guard whole == split else {
            fatalError("frames differ by split: whole \(whole), reads of \(readSize): \(split)")
        }
        guard pool.statistics.inUse == 0 else { fatalError("\(pool.statistics.inUse) buffers leaked") }
    }

    /// What decoding produced: the frames, then the error's code if one ended it.
    struct Outcome: Equatable, CustomStringConvertible {
        var frames: [[UInt8]] = []
        var error: String?
        var description: String { "\(frames.count) frames, error: \(error ?? "none")" }
    }

    static func decode<D: FrameDecoder>(_ stream: [UInt8], readSize: Int, decoder: D) -> Outcome {
        var accumulator = FrameAccumulator(decoder: decoder)
        var outcome = Outcome()
        var offset = 0
        while offset < stream.count {
            let end = min(stream.count, offset + readSize)
            var buffer = try! pool.acquire()
            _ = buffer.append(contentsOf: stream[offset..<end])
            offset = end
            do {
                try accumulator.feed(buffer) { outcome.frames.append(Array($0)) }
            } catch {
                outcome.error = error.code.description
                break
            }
        }
        return outcome
    }
}
