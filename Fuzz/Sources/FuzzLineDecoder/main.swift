import FuzzSupport
import KeelFraming

/// The program's entry (SwiftPM names an executable's main `FuzzLineDecoder_main`; the target is compiled as a
/// library, so this is it): hands control to libFuzzer.
@_cdecl("FuzzLineDecoder_main")
func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}

/// One input (also exported under libFuzzer's own name, which its runtime references).
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    FrameFuzzing.check(fuzzInput(data, count)) { settings in
        LineDecoder(maximumLineBytes: Int(settings % 200) + 1, delimiter: settings & 0x80 == 0 ? 0x0A : 0x00,
                    stripsCarriageReturn: settings & 0x40 != 0)
    }
    return 0
}
