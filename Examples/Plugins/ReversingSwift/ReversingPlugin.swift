// reversing-swift: an example keel-server plugin written in Swift against the C ABI (keel_plugin.h),
// built as a shared library: every message comes back reversed, byte by byte; an empty message closes
// the peer. A Swift plugin compiled into keel-server itself would use the ServerPlugin protocol; this
// one shows the loadable form, exported with @_cdecl.
import CKeelPluginABI

/// The host's functions, kept from `create` (one library serves every endpoint that names it).
nonisolated(unsafe) private var host: UnsafePointer<keel_host_api>?

private let pluginName: StaticString = "reversing-swift"
private let pluginSummary: StaticString = "echoes each message reversed (an example plugin in Swift, loaded through the C ABI)"

/// The descriptor, at a fixed address for the life of the process (libraries are never unloaded).
nonisolated(unsafe) private let descriptor: UnsafeMutablePointer<keel_plugin> = {
    let pointer = UnsafeMutablePointer<keel_plugin>.allocate(capacity: 1)
    pointer.initialize(to: makeDescriptor())
    return pointer
}()

private func makeDescriptor() -> keel_plugin {
    keel_plugin(
    abi_version: KEEL_PLUGIN_ABI_VERSION,
    name: UnsafeRawPointer(pluginName.utf8Start).assumingMemoryBound(to: CChar.self),
    summary: UnsafeRawPointer(pluginSummary.utf8Start).assumingMemoryBound(to: CChar.self),
    check: { _, _, count, error, size in
        guard count == 0 else {
            if let error { _ = "reversing-swift takes no settings (fix: remove them)".withCString { strncpyTo(error, $0, size) } }
            return -1
        }
        return 0
    },
    create: { api, _, _, _, _, _ in
        host = api
        return UnsafeMutableRawPointer(bitPattern: 1)  // no state: any non-NULL value means "started"
    },
    destroy: { _ in },
    open: { _, _ in nil },
    message: { _, _, peer, bytes, length in
        guard let host, let peer else { return }
        guard length > 0, let bytes else { return host.pointee.close(peer) }
        let reversed = [UInt8](UnsafeRawBufferPointer(start: bytes, count: length).reversed())
        _ = reversed.withUnsafeBytes { host.pointee.send(peer, $0.baseAddress, $0.count) }
    },
    closed: { _, _, _ in }
    )
}

/// Copies a C string into `destination` (at most `size` bytes, always terminated).
private func strncpyTo(_ destination: UnsafeMutablePointer<CChar>, _ source: UnsafePointer<CChar>, _ size: Int) -> Int {
    guard size > 0 else { return 0 }
    var index = 0
    while index < size - 1, source[index] != 0 {
        destination[index] = source[index]
        index += 1
    }
    destination[index] = 0
    return index
}

/// The library's one export.
@_cdecl("keel_plugin_entry")
public func keelPluginEntry() -> UnsafePointer<keel_plugin> {
    UnsafePointer(descriptor)
}
