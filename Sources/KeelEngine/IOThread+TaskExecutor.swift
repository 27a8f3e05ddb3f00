/// An I/O thread can run Swift tasks: with `Task(executorPreference: thread)` (or
/// `withTaskExecutorPreference(thread)`), async code runs on the I/O thread itself, so an async
/// connection handler reads and writes without a thread hop per message.
extension IOThread: TaskExecutor {
    /// Runs `job` on this I/O thread, after the current loop work.
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let accepted = schedule { [self] in job.runSynchronously(on: self.asUnownedTaskExecutor()) }
        if !accepted {
            // The thread has stopped: run the job where we are rather than lose it.
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
