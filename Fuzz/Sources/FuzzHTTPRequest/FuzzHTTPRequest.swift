import FuzzSupport
import KeelHTTP

/// The program's entry (SwiftPM names an executable's main `FuzzHTTPRequest_main`; the target is compiled as a
/// library, so this is it): hands control to libFuzzer.
@_cdecl("FuzzHTTPRequest_main")
func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}

/// One input: its first byte chooses where the rest is cut in two; both halves go through one parser
/// with small limits. Whatever the bytes, the parser must not crash, must report body ranges inside
/// the input it was given, must consume every byte unless it throws, and must keep throwing once it did.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let input = fuzzInput(data, count)
    guard let settings = input.first else { return 0 }
    let rest = UnsafeRawBufferPointer(rebasing: input.dropFirst())
    let cut = rest.isEmpty ? 0 : Int(settings) % (rest.count + 1)
    var parser = HTTPRequestParser(limits: HTTPParserLimits(
        maximumRequestLineLength: 128, maximumHeaderCount: 8, maximumHeadSize: 512, maximumBodySize: 4096))
    var failed = false
    for piece in [UnsafeRawBufferPointer(rebasing: rest[..<cut]), UnsafeRawBufferPointer(rebasing: rest[cut...])] {
        var offset = 0
        do {
            while let part = try parser.next(piece, consumed: &offset) {
                if case .body(let range) = part {
                    precondition(range.lowerBound >= 0 && range.upperBound <= piece.count && !range.isEmpty, "a body range outside the input")
                }
                precondition(!failed, "a part after an error")
            }
            precondition(offset == piece.count, "input left unconsumed")
        } catch {
            failed = true
        }
    }
    return 0
}
