import CKeelLinux
import Glibc

/// What a supervisor and its worker processes need from the kernel.
public enum Processes {
    /// A pipe whose ends close on exec (hand one to a child with a spawn file action).
    /// - Returns: the read end and the write end.
    public static func pipe() throws(SystemError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        guard ckeel_pipe_cloexec(&fds) == 0 else { throw SystemError(code: ckeel_errno(), call: "pipe2") }
        return (fds[0], fds[1])
    }

    /// Has the kernel send `signal` to this process when its parent exits (a worker follows its
    /// supervisor).
    public static func setParentDeathSignal(_ signal: Int32) throws(SystemError) {
        guard ckeel_set_parent_death_signal(signal) == 0 else { throw SystemError(code: ckeel_errno(), call: "prctl") }
    }
}
