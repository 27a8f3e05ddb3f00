import FuzzSupport
import KeelPubSub

/// The program's entry (see FuzzLineDecoder): hands control to libFuzzer.
@_cdecl("FuzzPubSubProtocol_main")
func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    runFuzzer(argc, argv, fuzzOne)
}

/// One input, parsed as a line-protocol line and as a binary frame body: either a command whose parts
/// lie within the input and keep the protocol's rules, or an error with a reason; never a crash.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = fuzzInput(data, count)
    check({ () throws(PubSubProtocolError) in try PubSubLineProtocol.parse(bytes) }, in: bytes)
    check({ () throws(PubSubProtocolError) in try PubSubBinaryProtocol.parse(bytes) }, in: bytes)
    return 0
}

func check(_ parse: () throws(PubSubProtocolError) -> PubSubCommand, in bytes: UnsafeRawBufferPointer) {
    do {
        switch try parse() {
        case .publish(let topic, let payload):
            precondition(payload.lowerBound >= 0 && payload.upperBound <= bytes.count, "payload outside the input")
            precondition(!topic.isEmpty && topic.utf8.count <= PubSubLineProtocol.maximumTopicBytes, "topic rules")
            precondition(!topic.contains("*") && !topic.contains(" "), "a published topic is one topic")
        case .subscribe(let filter), .unsubscribe(let filter):
            precondition(filter.text.utf8.count <= PubSubLineProtocol.maximumTopicBytes, "filter length")
            precondition(!filter.text.contains("*") && !filter.text.contains(" "), "filter rules")
            precondition(filter.matches(filter.text) || filter.isPattern == false, "a pattern matches its prefix")
        case .ping:
            break
        }
    } catch {
        precondition(!error.reason.isEmpty, "every refusal says why")
    }
}
