import FuzzSupport
import KeelFraming

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLineDecoder(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    FrameFuzzing.check(UnsafeRawBufferPointer(start: start, count: count)) { settings in
        LineDecoder(maximumLineBytes: Int(settings % 200) + 1, delimiter: settings & 0x80 == 0 ? 0x0A : 0x00,
                    stripsCarriageReturn: settings & 0x40 != 0)
    }
    return 0
}
