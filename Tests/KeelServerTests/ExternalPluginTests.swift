import Glibc
import KeelEngine
import KeelServer
import KeelSockets
import KeelSystem
import KeelTestSupport
import Testing

/// A library built beside the tests (the example plugins are dynamic library products of the package).
func builtLibrary(_ name: String) -> String {
    let directory = ServerProcess.executable.dropLast("keel-server".count)
    return "\(directory)lib\(name).so"
}

let examplePluginsBuilt = access(builtLibrary("KeelExamplePluginC"), R_OK) == 0 && access(builtLibrary("KeelExamplePluginSwift"), R_OK) == 0

/// Why the Swift example plugin cannot be loaded into this test process, if it cannot: in a
/// ThreadSanitizer or AddressSanitizer build the sanitizer's runtime is linked into the test executable
/// without exporting its symbols, so an instrumented library loaded at run time cannot resolve them.
/// (Plain builds, which CI runs on both backends, load it.)
func sanitizerPreventsLoadingPlugins() -> String? {
    for library in ["KeelExamplePluginC", "KeelExamplePluginSwift"] {
        do {
            _ = try ExternalPlugins.load(builtLibrary(library))
        } catch where error.detail.contains("undefined symbol: __tsan") || error.detail.contains("undefined symbol: __asan") {
            return error.detail
        } catch {}
    }
    return nil
}

@Suite("keel-server external plugins", .enabled(if: examplePluginsBuilt, "the example plugin libraries are not built beside the tests"))
struct ExternalPluginTests {
    @Test(.timeLimit(.minutes(1)), arguments: backendsUnderTest)
    func pluginsInCAndSwiftAreLoadedThroughTheCABIAndServeTheirEndpoints(backend: BackendKind) async throws {
        if let reason = sanitizerPreventsLoadingPlugins() {
            print("skipped under a sanitizer: \(reason)")
            return
        }
        let yaml = """
        plugin-libraries: ["\(builtLibrary("KeelExamplePluginC"))", "\(builtLibrary("KeelExamplePluginSwift"))"]
        endpoints:
          - { name: counting, listen: 127.0.0.1:0, framing: line, plugin: counting-echo-c, settings: { prefix: "#" } }
          - { name: reversing, listen: 127.0.0.1:0, framing: line, plugin: reversing-swift }
        """
        try await withServer(yaml, backend: backend) { host, addresses in
            let counting = try #require(addresses["counting"])
            let reversing = try #require(addresses["reversing"])
            let (counted, reversed, closed) = try await blocking { () -> ([String], [String], Bool) in
                let first = try TestClient(counting)
                let second = try TestClient(counting)
                defer { first.close(); second.close() }
                first.send("apple\nbanana\n")
                let firstLines = first.lines(2)
                second.send("cherry\n")
                let counted = firstLines + second.lines(1)
                let mirror = try TestClient(reversing)
                defer { mirror.close() }
                mirror.send("hello keel\n")
                let reversed = mirror.lines(1)
                mirror.send("\n")  // an empty message: the plugin closes the peer
                return (counted, reversed, mirror.closedByPeer())
            }
            #expect(counted == ["#1 apple", "#2 banana", "#1 cherry"])  // per-session counters
            #expect(reversed == ["leek olleh"])
            #expect(closed)
            #expect(host.status.endpoints.first { $0.name == "counting" }?.traffic.messagesOut == 3)
        }
    }

    @Test func aPluginsOwnSettingsCheckAndABadLibraryAreReportedAsConfigurationErrors() throws {
        if let reason = sanitizerPreventsLoadingPlugins() {
            print("skipped under a sanitizer: \(reason)")
            return
        }
        let yaml = """
        plugin-libraries: ["\(builtLibrary("KeelExamplePluginC"))", /nonexistent/libnothing.so]
        endpoints:
          - { name: counting, listen: 127.0.0.1:0, framing: line, plugin: counting-echo-c, settings: { colour: red } }
          - { name: reversing, listen: 127.0.0.1:0, framing: line, plugin: reversing-swift }
        """
        let error = try #require(throws: ConfigurationError.self) { try ConfigurationLoader().parse(yaml, file: "plugins.yaml") }
        #expect(error.issues.contains { $0.key == "plugin-libraries" && $0.problem.contains("/nonexistent/libnothing.so: cannot load the library") })
        #expect(error.issues.contains { $0.endpoint == "counting" && $0.problem.contains("unknown setting \"colour\"") })
        // The Swift plugin's library was not listed in this file (and the listed ones failed first):
        #expect(error.issues.contains { $0.endpoint == "reversing" && $0.problem.contains("no plugin named \"reversing-swift\"") })
    }

    @Test func aLibraryBuiltForAnotherABIVersionIsRefusedWithTheFix() async throws {
        guard access("/usr/bin/cc", X_OK) == 0 else { return }
        let directory = "/tmp/keel-abi-\(getpid())"
        mkdir(directory, 0o755)
        defer { _ = system("rm -rf \(directory)") }
        let source = """
        #include <stdint.h>
        struct descriptor { uint32_t abi_version; const char *name; };
        static const struct descriptor plugin = { 99, "from-the-future" };
        const void *keel_plugin_entry(void) { return &plugin; }
        """
        let file = try #require(fopen("\(directory)/future.c", "w"))
        fputs(source, file)
        fclose(file)
        // The compiler runs on a thread of its own: a blocked runtime thread would stall other tests' tasks.
        let compiled = try await blocking { system("cc -shared -fPIC -o \(directory)/libfuture.so \(directory)/future.c") }
        #expect(compiled == 0)
        #expect(throws: ExternalPluginError.self) { try ExternalPlugins.load("\(directory)/libfuture.so") }
        do {
            _ = try ExternalPlugins.load("\(directory)/libfuture.so")
        } catch {
            #expect(error.detail.contains("built for plugin ABI version 99, but this keel-server speaks version 1"))
            #expect(error.detail.contains("fix: rebuild the plugin"))
        }
    }
}
