import FuzzSupport
import KeelFraming

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLengthPrefixedDecoder(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    FrameFuzzing.check(UnsafeRawBufferPointer(start: start, count: count)) { settings in
        LengthPrefixedDecoder(prefixBytes: [1, 2, 4, 8][Int(settings & 3)], maximumPayloadBytes: Int(settings >> 2) * 16)
    }
    return 0
}
