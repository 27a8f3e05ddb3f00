import HTTPTypes
import KeelBuffers

/// Writes HTTP/1.1 heads and chunked-body framing as bytes, into pooled buffers or arrays.
public enum HTTPWriter {
    /// The bytes of `response`'s head: status line, fields (in order, names as given), blank line.
    /// An empty reason phrase is written as the status's standard one.
    public static func head(_ response: HTTPResponse, version: HTTPVersion = .http1_1) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(64 + response.headerFields.count * 32)
        bytes.append(contentsOf: "\(version) \(response.status.code) ".utf8)
        let reason = response.status.reasonPhrase.isEmpty
            ? (standardReasons[response.status.code] ?? "") : response.status.reasonPhrase
        bytes.append(contentsOf: reason.utf8)
        bytes.append(contentsOf: [.cr, .lf])
        appendFields(response.headerFields, to: &bytes)
        return bytes
    }

    /// The bytes of `request`'s head: the request line (the path, or the authority for CONNECT), a
    /// `Host` field from the authority (unless the fields carry one), then the fields.
    public static func head(_ request: HTTPRequest, version: HTTPVersion = .http1_1) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(64 + request.headerFields.count * 32)
        let target = request.method == .connect ? (request.authority ?? "") : (request.path ?? "/")
        bytes.append(contentsOf: "\(request.method.rawValue) \(target) \(version)".utf8)
        bytes.append(contentsOf: [.cr, .lf])
        var fields = request.headerFields
        if fields[.hostField] == nil, let authority = request.authority {
            fields.insert(HTTPField(name: .hostField, value: authority), at: 0)
        }
        appendFields(fields, to: &bytes)
        return bytes
    }

    /// Reason phrases of the statuses swift-http-types names, by code, for statuses made from a code alone.
    private static let standardReasons: [Int: String] = Dictionary(uniqueKeysWithValues: [
        HTTPResponse.Status.continue, .switchingProtocols, .ok, .created, .accepted, .noContent, .partialContent,
        .movedPermanently, .found, .seeOther, .notModified, .temporaryRedirect, .permanentRedirect,
        .badRequest, .unauthorized, .forbidden, .notFound, .methodNotAllowed, .notAcceptable, .requestTimeout,
        .conflict, .gone, .lengthRequired, .preconditionFailed, .contentTooLarge, .uriTooLong,
        .unsupportedMediaType, .rangeNotSatisfiable, .expectationFailed, .misdirectedRequest, .unprocessableContent,
        .upgradeRequired, .preconditionRequired, .tooManyRequests, .requestHeaderFieldsTooLarge,
        .internalServerError, .notImplemented, .badGateway, .serviceUnavailable, .gatewayTimeout,
        .httpVersionNotSupported,
    ].map { ($0.code, $0.reasonPhrase) })

    private static func appendFields(_ fields: HTTPFields, to bytes: inout [UInt8]) {
        for field in fields {
            bytes.append(contentsOf: field.name.rawName.utf8)
            bytes.append(contentsOf: [.colon, .space])
            bytes.append(contentsOf: field.value.utf8)
            bytes.append(contentsOf: [.cr, .lf])
        }
        bytes.append(contentsOf: [.cr, .lf])
    }

    /// Writes `bytes` into pooled buffers from `pool`, as few as fit, and passes each to `emit`.
    /// - Throws: ``BufferPoolError`` when the pool is exhausted (what was emitted stays emitted).
    public static func write(_ bytes: some Collection<UInt8>, pool: BufferPool, _ emit: (consuming IOBuffer) -> Void) throws(BufferPoolError) {
        var remaining = bytes[...]
        while !remaining.isEmpty {
            var buffer = try pool.acquire()
            let count = min(buffer.writableBytes, remaining.count)
            let end = remaining.index(remaining.startIndex, offsetBy: count)
            _ = buffer.append(contentsOf: remaining[..<end])
            remaining = remaining[end...]
            emit(buffer)
        }
    }

    /// The line that opens a chunk of `size` bytes (`size` in hex, CRLF). Follow the chunk's bytes
    /// with ``chunkEnd``.
    public static func chunkHeader(size: Int) -> [UInt8] {
        precondition(size > 0, "a chunk has at least one byte; end the body with lastChunk")
        return Array(String(size, radix: 16).utf8) + [.cr, .lf]
    }

    /// The CRLF after a chunk's bytes.
    public static let chunkEnd: [UInt8] = [.cr, .lf]

    /// The zero-size chunk and empty trailer section that end a chunked body.
    public static let lastChunk: [UInt8] = Array("0\r\n\r\n".utf8)
}
