import CKeelOpenSSL
import HTTPTypes
import KeelHTTP

/// The opening handshake (RFC 6455, 4): what a server checks in an upgrade request and answers, and
/// what a client sends and checks. SHA-1 and base64 come from OpenSSL.
public enum WebSocketHandshake {
    /// The GUID RFC 6455 appends to the key.
    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// OpenSSL readied for Keel before its first use here (see `ckeel_openssl_prepare`: KeelTLS's
    /// allocation cache must be installed before OpenSSL allocates anything).
    private static let openSSLPrepared: Bool = { _ = ckeel_openssl_prepare(); return true }()

    /// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
    public static func acceptValue(forKey key: String) -> String {
        _ = openSSLPrepared
        let input = Array((key + guid).utf8)
        var digest = [UInt8](repeating: 0, count: 20)
        var length: UInt32 = 0
        _ = EVP_Digest(input, input.count, &digest, &length, EVP_sha1(), nil)
        return base64(digest)
    }

    /// Standard base64 with padding (OpenSSL's EVP_EncodeBlock).
    static func base64(_ bytes: [UInt8]) -> String {
        var output = [UInt8](repeating: 0, count: (bytes.count + 2) / 3 * 4 + 1)
        let written = EVP_EncodeBlock(&output, bytes, Int32(bytes.count))
        return String(decoding: output.prefix(Int(written)), as: UTF8.self)
    }

    /// True when `key` is base64 of 16 bytes (24 characters ending in "==").
    static func isValidKey(_ key: String) -> Bool {
        _ = openSSLPrepared
        let bytes = Array(key.utf8)
        guard bytes.count == 24, bytes[22] == UInt8(ascii: "="), bytes[23] == UInt8(ascii: "=") else { return false }
        var decoded = [UInt8](repeating: 0, count: 18)
        return EVP_DecodeBlock(&decoded, bytes, 24) == 18
    }

    /// Why an upgrade request was refused: the response to send (400, or 426 naming version 13).
    public struct Refusal: Error, Sendable, Hashable {
        /// The response to answer with before closing.
        public var response: HTTPResponse
        /// What was wrong.
        public var detail: String
    }

    /// Checks `head` as a WebSocket upgrade request and makes the 101 response, choosing the first
    /// of the client's subprotocols that `subprotocols` (the server's, in its order of preference)
    /// lists, if any.
    /// - Throws: ``Refusal`` with a 400 response (not a valid upgrade request) or a 426 naming the
    ///   supported version (another version).
    public static func serverResponse(to head: HTTPRequestHead, subprotocols: [String] = []) throws(Refusal) -> HTTPResponse {
        let fields = head.request.headerFields
        func refuse(_ detail: String) -> Refusal {
            var fields = HTTPFields()
            fields[.contentLength] = "0"
            return Refusal(response: HTTPResponse(status: .badRequest, headerFields: fields), detail: detail)
        }
        guard head.request.method == .get else { throw refuse("a WebSocket upgrade must be a GET") }
        guard head.version == .http1_1 else { throw refuse("a WebSocket upgrade needs HTTP/1.1") }
        guard head.upgrade.contains(where: { $0.lowercased() == "websocket" }) else {
            throw refuse("no Upgrade: websocket with Connection: upgrade")
        }
        guard let version = fields[.secWebSocketVersion], version.trimmingCharacters() == "13" else {
            var fields = HTTPFields()
            fields[.secWebSocketVersion] = "13"
            fields[.contentLength] = "0"
            throw Refusal(response: HTTPResponse(status: .upgradeRequired, headerFields: fields),
                          detail: "Sec-WebSocket-Version \(fields[.secWebSocketVersion] ?? "missing"), not 13")
        }
        let keys = fields[values: .secWebSocketKey]
        guard keys.count == 1, let key = keys.first?.trimmingCharacters(), isValidKey(key) else {
            throw refuse("Sec-WebSocket-Key missing, repeated or not 16 bytes in base64")
        }
        var response = HTTPFields()
        response[.upgrade] = "websocket"
        response[.connection] = "Upgrade"
        response[.secWebSocketAccept] = acceptValue(forKey: key)
        let offered = fields[values: .secWebSocketProtocol].flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters() }
        if let chosen = subprotocols.first(where: { offered.contains($0) }) {
            response[.secWebSocketProtocol] = chosen
        }
        return HTTPResponse(status: .switchingProtocols, headerFields: response)
    }

    /// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64.
    public static func makeKey() -> String {
        _ = openSSLPrepared
        var bytes = [UInt8](repeating: 0, count: 16)
        _ = RAND_bytes(&bytes, 16)
        return base64(bytes)
    }

    /// True when `head` accepts a client's upgrade sent with `key`: 101, Upgrade: websocket,
    /// Connection: upgrade and the matching Sec-WebSocket-Accept.
    public static func clientAccepts(_ head: HTTPResponseHead, key: String) -> Bool {
        let fields = head.response.headerFields
        let connection = fields[values: .connection].flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters().lowercased() }
        return head.response.status.code == 101
            && fields[.upgrade]?.lowercased() == "websocket"
            && connection.contains("upgrade")
            && fields[.secWebSocketAccept] == acceptValue(forKey: key)
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs.
    func trimmingCharacters() -> String {
        let isOWS: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isOWS($0) }), let last = lastIndex(where: { !isOWS($0) }) else { return "" }
        return String(self[first...last])
    }
}
