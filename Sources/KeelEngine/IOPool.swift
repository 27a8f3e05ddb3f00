import KeelBuffers
import KeelSystem
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How an ``IOPool`` is built.
public struct IOPoolConfiguration: Sendable {
    /// Number of I/O threads. Default: the number of cores available to the process.
    public var threadCount: Int
    /// The backend, or nil to choose automatically (``BackendKind/resolve(_:)``: `KEEL_BACKEND`, then
    /// the io_uring probe).
    public var backend: BackendKind?
    /// Submission queue entries per ring (io_uring). The completion queue gets four times as many.
    public var ringEntries: UInt32
    /// Each I/O thread's buffer pool.
    public var bufferPool: BufferPoolConfiguration
    /// Threads of the work pool for blocking work.
    public var workPoolThreadCount: Int
    /// Buffers each io_uring thread lends the kernel for pooled receives (a power of two). They are
    /// taken from the thread's buffer pool on the first pooled receive.
    public var providedBuffersPerThread: UInt32
    /// The optional kernel features to use where the kernel has them (``KernelFeatures``); those named
    /// in `KEEL_FEATURES_OFF` are left out as well. The io_uring ones are ignored on epoll.
    public var kernelFeatures: KernelFeatures

    /// Creates a configuration; every parameter has a production default.
    public init(
        threadCount: Int = IOPoolConfiguration.coreCount,
        backend: BackendKind? = nil,
        ringEntries: UInt32 = 1024,
        bufferPool: BufferPoolConfiguration = .default,
        workPoolThreadCount: Int = 2,
        providedBuffersPerThread: UInt32 = 512,
        kernelFeatures: KernelFeatures = .all
    ) {
        self.kernelFeatures = kernelFeatures
        precondition(providedBuffersPerThread > 0 && providedBuffersPerThread & (providedBuffersPerThread - 1) == 0,
                     "providedBuffersPerThread must be a power of two")
        self.providedBuffersPerThread = providedBuffersPerThread
        self.threadCount = threadCount
        self.backend = backend
        self.ringEntries = ringEntries
        self.bufferPool = bufferPool
        self.workPoolThreadCount = workPoolThreadCount
    }

    /// Cores available to this process (its CPU affinity), at least 1.
    public static var coreCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
}

/// A pool of I/O threads, each with its own backend, timers and buffer pool, plus a work pool for
/// blocking work.
///
/// ```swift
/// let pool = try IOPool(configuration: .init(threadCount: 2))
/// let thread = pool.next()
/// thread.execute { thread.scheduleTimer(after: .milliseconds(10)) { print("tick") } }
/// pool.shutdown()
/// ```
///
/// **Lifetime:** call ``shutdown()`` when done: it cancels in-flight operations, drops pending timers,
/// joins every thread and closes every descriptor the pool opened. It must not be called from one of
/// the pool's own I/O threads.
public final class IOPool: Sendable {
    /// The I/O threads, in index order.
    public let threads: [IOThread]
    /// The backend every thread runs.
    public let backend: BackendKind
    /// The work pool for blocking work.
    public let workPool: WorkPool

    private let systemThreads: [SystemThread]
    private let nextIndex = Atomic<Int>(0)
    private let isShutDown = Atomic<Bool>(false)

    /// Starts the I/O threads and waits until each has set up its backend.
    /// - Throws: ``KeelError`` when the backend is unavailable or a thread's setup fails (threads
    ///   already started are stopped and joined first).
    public init(configuration: IOPoolConfiguration = IOPoolConfiguration()) throws(KeelError) {
        let kind = try BackendKind.resolve(configuration.backend)
        backend = kind
        let workPool = WorkPool(threadCount: configuration.workPoolThreadCount)
        self.workPool = workPool
        let count = max(1, configuration.threadCount)
        let wantedFeatures = configuration.kernelFeatures.subtracting(KernelFeatures.turnedOffByEnvironment)

        let startups = (0..<count).map { _ in ThreadStartup() }
        var started: [SystemThread] = []
        for i in 0..<count {
            let startup = startups[i]
            started.append(SystemThread.spawn(name: "keel-io-\(i)") {
                let bufferPool = BufferPool(configuration: configuration.bufferPool)
                let backend: Backend
                do throws(SystemError) {
                    backend = try Backend(
                        kind: kind, ringEntries: configuration.ringEntries, pool: bufferPool,
                        providedBuffers: min(configuration.providedBuffersPerThread,
                                             UInt32(configuration.bufferPool.maximumBuffers)),
                        kernelFeatures: wantedFeatures.intersection(.ringFeatures))
                } catch {
                    startup.finish(.failure(error))
                    return
                }
                let thread = IOThread(
                    index: i, backendKind: kind, backend: backend, bufferPool: bufferPool, workPool: workPool,
                    socketFeatures: wantedFeatures.intersection(KernelFeatures.availableSocketFeatures))
                startup.finish(.success(thread))
                thread.run()
            })
        }
        var threads: [IOThread] = []
        var failure: SystemError?
        for startup in startups {
            switch startup.wait() {
            case .success(let thread): threads.append(thread)
            case .failure(let error): failure = failure ?? error
            }
        }
        if let failure {
            for thread in threads { thread.requestStop() }
            for thread in started { thread.join() }
            workPool.shutdown()
            throw KeelError(.backendSetupFailed, context: "starting \(kind) I/O threads", underlying: failure)
        }
        self.threads = threads
        self.systemThreads = started
        if let first = threads.first {
            Self.logFeaturesOnce(inUse: first.kernelFeatures, wanted: wantedFeatures, backend: kind)
        }
    }

    /// The optional kernel features the pool's threads use (no io_uring ones on epoll).
    public var kernelFeatures: KernelFeatures { threads.first?.kernelFeatures ?? [] }

    private static func logFeaturesOnce(inUse: KernelFeatures, wanted: KernelFeatures, backend: BackendKind) {
        let first = loggedFeatures.withLock { logged in
            defer { logged = true }
            return !logged
        }
        guard first else { return }
        let turnedOff = KernelFeatures.all.subtracting(wanted)
        let applicable = backend == .ioUring ? KernelFeatures.all : KernelFeatures.socketFeatures
        let missing = wanted.intersection(applicable).subtracting(inUse)
        BackendKind.logger.info(
            "keel kernel features: \(inUse) (turned off: \(turnedOff); not in this kernel: \(missing))")
    }

    deinit {
        shutdown()
    }

    /// The next I/O thread, round robin. Use it to spread connections over threads.
    public func next() -> IOThread {
        let i = nextIndex.wrappingAdd(1, ordering: .relaxed).oldValue
        return threads[i % threads.count]
    }

    /// Stops every I/O thread (cancelling in-flight operations and dropping timers), joins them, shuts
    /// the work pool down and closes every descriptor the pool opened. Idempotent; blocks until done.
    public func shutdown() {
        guard !isShutDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        precondition(IOThread.current.map { current in !threads.contains { $0 === current } } ?? true,
                     "IOPool.shutdown() called on one of its own I/O threads")
        for thread in threads { thread.requestStop() }
        for thread in systemThreads { thread.join() }
        workPool.shutdown()
    }
}

/// Hands an I/O thread (or its setup error) from the new OS thread back to `IOPool.init`.
private final class ThreadStartup: Sendable {
    private let result = Mutex<Result<IOThread, SystemError>?>(nil)
    private let ready = Semaphore()

    func finish(_ value: Result<IOThread, SystemError>) {
        result.withLock { $0 = value }
        ready.signal()
    }

    func wait() -> Result<IOThread, SystemError> {
        ready.wait()
        return result.withLock { $0! }
    }
}

private let loggedFeatures = Locked(false)
