import FuzzSupport
import KeelFraming

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFixedSizeDecoder(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    FrameFuzzing.check(UnsafeRawBufferPointer(start: start, count: count)) { settings in
        FixedSizeDecoder(frameBytes: Int(settings) + 1)
    }
    return 0
}
