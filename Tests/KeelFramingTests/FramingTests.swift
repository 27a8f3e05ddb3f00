import KeelBuffers
import KeelFraming
import KeelTestSupport
import Testing

/// Feeds `input` split into `pieces` and returns the frames, or the error.
func decode<D: FrameDecoder>(
    _ decoder: D, _ pieces: [[UInt8]], pool: BufferPool
) -> Result<[[UInt8]], FramingError> {
    var accumulator = FrameAccumulator(decoder: decoder)
    var frames: [[UInt8]] = []
    do {
        for piece in pieces {
            // A read never returns more than one buffer holds: longer pieces arrive as several reads.
            var rest = piece[...]
            repeat {
                var buffer = try! pool.acquire()
                let taken = buffer.append(contentsOf: rest)
                rest = rest.dropFirst(taken)
                try accumulator.feed(buffer) { frames.append(Array($0)) }
            } while !rest.isEmpty
        }
    } catch {
        return .failure(error)
    }
    return .success(frames)
}

/// Every way of splitting `input`: whole, byte by byte, and in two at every offset.
func splits(_ input: [UInt8]) -> [(String, [[UInt8]])] {
    var result: [(String, [[UInt8]])] = [("whole", [input]), ("byte by byte", input.map { [$0] })]
    for offset in 1..<max(1, input.count) {
        result.append(("split at \(offset)", [Array(input[..<offset]), Array(input[offset...])]))
    }
    return result
}

/// Checks that every split of `input` yields `expected`, and that the pool gets every buffer back.
func verify<D: FrameDecoder>(
    _ makeDecoder: () -> D, input: [UInt8], expected: [[UInt8]], bufferSize: Int = 64,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let pool = BufferPool(configuration: .init(bufferSize: bufferSize, buffersPerSlab: 16, maximumBytes: bufferSize * 1024))
    for (name, pieces) in splits(input) {
        switch decode(makeDecoder(), pieces, pool: pool) {
        case .success(let frames):
            #expect(frames == expected, "\(name)", sourceLocation: sourceLocation)
        case .failure(let error):
            Issue.record("\(name): \(error)", sourceLocation: sourceLocation)
        }
        #expect(pool.statistics.inUse == 0, "\(name): buffers leaked", sourceLocation: sourceLocation)
    }
}

@Suite("Framing")
struct FramingTests {
    @Test func linesWithAndWithoutCarriageReturns() {
        let input = Array("hello\r\nworld\n\nlast line\n".utf8)
        verify({ LineDecoder(maximumLineBytes: 32) }, input: input,
               expected: ["hello", "world", "", "last line"].map { Array($0.utf8) })
    }

    @Test func lengthPrefixedFramesOfEveryWidth() {
        for width in [1, 2, 4, 8] {
            var input: [UInt8] = []
            var expected: [[UInt8]] = []
            for payload in [Array("a".utf8), [], Array("length prefixed".utf8), [UInt8](repeating: 7, count: 40)] {
                let length = UInt64(payload.count)
                for i in (0..<width).reversed() { input.append(UInt8(truncatingIfNeeded: length >> (8 * UInt64(i)))) }
                input += payload
                expected.append(payload)
            }
            verify({ LengthPrefixedDecoder(prefixBytes: width, maximumPayloadBytes: 48) }, input: input, expected: expected)
        }
    }

    @Test func fixedSizeFrames() {
        let input = Array(0..<30 as Range<UInt8>)
        verify({ FixedSizeDecoder(frameBytes: 6) }, input: input,
               expected: stride(from: 0, to: 30, by: 6).map { Array(input[$0..<$0 + 6]) })
    }

    @Test func framesInOneBufferAreHandedOutWithoutCopying() throws {
        let pool = BufferPool(configuration: .init(bufferSize: 256, buffersPerSlab: 4, maximumBytes: 256 * 4))
        var buffer = try pool.acquire()
        buffer.append(contentsOf: Array("one\ntwo\n".utf8))
        let base = UInt(bitPattern: buffer.unsafeReadableAddress)
        var accumulator = FrameAccumulator(decoder: LineDecoder())
        var addresses: [UInt] = []
        try accumulator.feed(buffer) { addresses.append(UInt(bitPattern: $0.baseAddress)) }
        #expect(addresses == [base, base + 4], "frames point into the receive buffer")
    }

    @Test func oversizedAndMalformedInputIsATypedErrorNotATrap() {
        let pool = BufferPool(configuration: .init(bufferSize: 64, buffersPerSlab: 16, maximumBytes: 64 * 64))
        // A line that never ends.
        let endless = [UInt8](repeating: UInt8(ascii: "x"), count: 200)
        for (name, pieces) in splits(endless).prefix(3) {
            guard case .failure(let error) = decode(LineDecoder(maximumLineBytes: 32), pieces, pool: pool) else {
                Issue.record("\(name): an endless line was accepted")
                continue
            }
            #expect(error.code == .frameTooLarge)
        }
        // A length field announcing more than allowed.
        guard case .failure(let error) = decode(LengthPrefixedDecoder(prefixBytes: 4, maximumPayloadBytes: 16),
                                                [[0x7F, 0xFF, 0xFF, 0xFF, 1, 2, 3]], pool: pool)
        else {
            Issue.record("an oversized length was accepted")
            return
        }
        #expect(error.code == .frameTooLarge)
        // A length field over the maximum, announced in a frame that would span buffers.
        let big = [0, 0, 0x07, 0xD0] + [UInt8](repeating: 1, count: 100)
        guard case .failure(let tooBig) = decode(LengthPrefixedDecoder(prefixBytes: 4, maximumPayloadBytes: 1000),
                                                 [Array(big[..<30]), Array(big[30...])], pool: pool)
        else {
            Issue.record("a frame over the maximum was accumulated")
            return
        }
        #expect(tooBig.code == .frameTooLarge)
        // A line over the maximum that spans several buffers, in every split.
        let longLine = [UInt8](repeating: UInt8(ascii: "y"), count: 300) + [UInt8(ascii: "\n")]
        for (name, pieces) in splits(longLine) {
            guard case .failure(let error) = decode(LineDecoder(maximumLineBytes: 200), pieces, pool: pool) else {
                Issue.record("\(name): a line over the maximum was accepted")
                continue
            }
            #expect(error.code == .frameTooLarge, "\(name)")
        }
        #expect(pool.statistics.inUse == 0)
    }

    // Frames longer than one pool buffer (64 bytes here), gathered across reads, in every split.

    @Test func lengthPrefixedFramesLongerThanOneBuffer() {
        var input: [UInt8] = []
        var expected: [[UInt8]] = []
        for (index, size) in [3, 700, 0, 64, 65, 129, 5].enumerated() {
            let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ index) }
            input += [UInt8(size >> 8), UInt8(size & 0xFF)] + payload
            expected.append(payload)
        }
        verify({ LengthPrefixedDecoder(prefixBytes: 2, maximumPayloadBytes: 1000) }, input: input, expected: expected)
    }

    @Test func linesLongerThanOneBuffer() {
        let lines = ["short", String(repeating: "a", count: 300), "", String(repeating: "b", count: 64), "end"]
        let input = Array(lines.map { $0 + "\n" }.joined().utf8)
        verify({ LineDecoder(maximumLineBytes: 400) }, input: input, expected: lines.map { Array($0.utf8) })
    }

    @Test func fixedSizeFramesLongerThanOneBuffer() {
        let input = (0..<600).map { UInt8(truncatingIfNeeded: $0) }
        verify({ FixedSizeDecoder(frameBytes: 200) }, input: input,
               expected: stride(from: 0, to: 600, by: 200).map { Array(input[$0..<$0 + 200]) })
    }

    @Test func aSixteenMebibyteFrameArrivesWhole() throws {
        let pool = BufferPool()  // 16 KiB buffers
        let size = 16 * 1024 * 1024
        var accumulator = FrameAccumulator(decoder: LengthPrefixedDecoder(prefixBytes: 4, maximumPayloadBytes: size))
        var received: [Int] = []
        var checksum = 0
        var stream: [UInt8] = [0x01, 0x00, 0x00, 0x00]  // 16 MiB, then a 1-byte frame
        var produced = 0
        while produced < size {
            let count = min(size - produced, 16 * 1024 - stream.count)
            stream += (produced..<(produced + count)).map { UInt8(truncatingIfNeeded: $0 / 4096) }
            produced += count
            if produced == size { stream += [0, 0, 0, 1, 42] }
            var buffer = try pool.acquire()
            buffer.append(contentsOf: stream)
            stream = []
            try accumulator.feed(buffer) { payload in
                received.append(payload.count)
                checksum = payload.reduce(0) { $0 &+ Int($1) }
            }
        }
        #expect(received == [size, 1])
        #expect(checksum == 42)
        #expect(pool.statistics.inUse == 0)
    }

    @Test(.enabled(if: AllocationCounter.isActive, "malloc is not interposed (sanitizer build)"))
    func framesWithinOneBufferAllocateNothing() throws {
        let pool = BufferPool(configuration: .init(bufferSize: 256, buffersPerSlab: 8, maximumBytes: 256 * 8))
        var accumulator = FrameAccumulator(decoder: LengthPrefixedDecoder(prefixBytes: 2, maximumPayloadBytes: 4096))
        var frames = 0
        // Frames of 40 bytes split across reads of 30: every other frame straddles two buffers.
        let frame: [UInt8] = [0, 38] + [UInt8](repeating: 9, count: 38)
        let stream = Array(repeatElement(frame, count: 200).joined())
        func run(_ range: Range<Int>) throws {
            for start in stride(from: range.lowerBound, to: range.upperBound, by: 30) {
                var buffer = try pool.acquire()
                buffer.append(contentsOf: stream[start..<min(start + 30, range.upperBound)])
                try accumulator.feed(buffer) { _ in frames += 1 }
            }
        }
        try run(0..<1200)  // warm-up
        var failure: (any Error)?
        let allocations = AllocationCounter.count {
            do { try run(1200..<stream.count) } catch { failure = error }
        }
        #expect(failure == nil)
        #expect(frames == 200)
        #expect(allocations == 0, "\(allocations) allocations for 170 frames")
    }
}
