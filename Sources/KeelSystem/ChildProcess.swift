import Glibc

/// A child process whose standard output is read line by line on a thread of its own (a supervisor's
/// workers; a test's server). Its standard error is the parent's; its signal mask starts empty.
public struct ChildProcess: Sendable {
    /// The child's process id.
    public let pid: pid_t

    /// Starts `arguments[0]` (a path) with `arguments` and `environment` (`NAME=value` entries; nil:
    /// the parent's). Each line the child writes to standard output goes to `onLine` (without its
    /// newline), then `onEnd` runs once the child has closed its output.
    public static func spawn(_ arguments: [String], environment: [String]? = nil,
                             onLine: @escaping @Sendable (String) -> Void,
                             onEnd: @escaping @Sendable () -> Void = {}) throws(SystemError) -> ChildProcess {
        let (readEnd, writeEnd) = try Processes.pipe()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, writeEnd, STDOUT_FILENO)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        let argv = arguments.map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        let envp = environment.map { $0.map { strdup($0) } + [nil] }
        defer { for entry in envp ?? [] { free(entry) } }
        var child: pid_t = 0
        let result = envp.map { posix_spawn(&child, arguments[0], &actions, &attributes, argv, $0) }
            ?? posix_spawn(&child, arguments[0], &actions, &attributes, argv, environ)
        Descriptors.close(writeEnd)
        guard result == 0 else {
            Descriptors.close(readEnd)
            throw SystemError(code: result, call: "posix_spawn")
        }
        SystemThread.spawn(name: "child-output") {
            defer {
                Descriptors.close(readEnd)
                onEnd()
            }
            var pending: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = read(readEnd, &chunk, chunk.count)
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { return }
                pending += chunk[..<count]
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    onLine(String(decoding: pending[..<newline], as: UTF8.self))
                    pending.removeSubrange(...newline)
                }
            }
        }.detach()
        return ChildProcess(pid: child)
    }

    /// The parent's environment as `NAME=value` entries.
    public static var currentEnvironment: [String] {
        var entries: [String] = []
        var index = 0
        while let entry = environ[index] {
            entries.append(String(cString: entry))
            index += 1
        }
        return entries
    }
}
