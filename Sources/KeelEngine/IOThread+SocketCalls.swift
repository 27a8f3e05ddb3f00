import CKeelLinux
import Glibc
import KeelSystem

/// The socket calls a connection makes at once (not through the ring): the inline send, the coalesced
/// `sendmsg`, shutdown, close. They go to the kernel through ``Sockets``, or, on an embedded thread, to
/// its in-memory streams, so the connection code that tests run is the code production runs.
///
/// Each takes a descriptor value as the thread's operations do: an ordinary descriptor or a direct one
/// (``directDescriptorFlag``), for which the call uses the ordinary descriptor installed on first need
/// (``systemDescriptor(_:)``).
///
/// I/O thread only, like the connection that makes them.
extension IOThread {
    /// Marks a descriptor value as a direct descriptor: the rest is a slot of this thread's registered
    /// file table (``KernelFeatures/directDescriptors``). Such a value is positive, so "open" tests
    /// (`>= 0`) keep working; process descriptors never reach this bit.
    public static let directDescriptorFlag: Int32 = 1 << 30

    /// True when `fd` is a direct descriptor (not negative, flag set): one mask and one compare.
    @inlinable
    public static func isDirectDescriptor(_ fd: Int32) -> Bool {
        fd & (Int32.min | directDescriptorFlag) == directDescriptorFlag
    }

    /// True when a direct accept (``IOOperation/accept(_:multishot:direct:)``) on this thread puts
    /// connections in its registered file table (io_uring with ``KernelFeatures/directDescriptors``).
    public var acceptsDirectDescriptors: Bool { backend.acceptsDirectDescriptors }

    /// The descriptor value for a direct accept's result (a file-table slot): what this thread's
    /// operations and socket calls take, and ``closeDescriptor(_:)`` closes.
    public func acceptedDescriptor(_ slot: Int32) -> Int32 {
        backend.noteDirectDescriptor()
        return slot | IOThread.directDescriptorFlag
    }

    /// An ordinary descriptor for `fd`: `fd` itself, or, for a direct descriptor, one the kernel installs
    /// on first need (`IORING_OP_FIXED_FD_INSTALL`, completed while submitting) and that
    /// ``closeDescriptor(_:)`` closes with the slot. -1 when the kernel refuses. Do not close it yourself.
    @inlinable
    public func systemDescriptor(_ fd: Int32) -> Int32 {
        guard IOThread.isDirectDescriptor(fd) else { return fd }
        return installedDescriptor(direct: fd)
    }

    @usableFromInline
    func installedDescriptor(direct fd: Int32) -> Int32 { backend.installedDescriptor(forDirect: fd) }

    /// Non-blocking send (never SIGPIPE); `urgent` sends out-of-band data.
    @inlinable
    package func send(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, urgent: Bool = false) throws(SystemError)
        -> IOOutcome<Int>
    {
        if let embeddedBackend { return try embeddedBackend.send(fd, bytes, urgent: urgent) }
        return try Sockets.send(systemDescriptor(fd), bytes, urgent: urgent)
    }

    /// The flush's send of one buffer (never SIGPIPE): the bytes the kernel took, or -errno (`-EAGAIN`
    /// when the socket is full). No error value is built: a flush makes one per connection per loop
    /// turn, and ``send(_:_:urgent:)``'s wrapping cost ~40 instructions of it (callgrind).
    @inlinable
    package func sendBytes(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int {
        if let embeddedBackend { return embeddedBackend.sendBytes(fd, bytes) }
        // No direct-descriptor mapping: only the epoll flush sends this way, and epoll has none.
        while true {
            let sent = ckeel_send(fd, bytes.baseAddress, bytes.count, Int32(CKEEL_MSG_NOSIGNAL))
            if sent >= 0 { return sent }
            let code = ckeel_errno()
            if code != EINTR { return -Int(code) }
        }
    }

    /// Non-blocking `sendmsg` of a message's iovecs (never SIGPIPE).
    @inlinable
    package func sendMessage(_ fd: Int32, _ message: UnsafePointer<msghdr>) throws(SystemError) -> IOOutcome<Int> {
        if let embeddedBackend { return try embeddedBackend.sendMessage(fd, message) }
        return try Sockets.sendMessage(fd, message)  // epoll's flush only, as sendBytes
    }

    /// Non-blocking receive into `buffer`; `urgent` takes the out-of-band byte. 0: end of stream.
    package func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, urgent: Bool = false)
        throws(SystemError) -> IOOutcome<Int>
    {
        if let embeddedBackend { return try embeddedBackend.receive(fd, into: buffer, urgent: urgent) }
        return try Sockets.receive(systemDescriptor(fd), into: buffer, urgent: urgent)
    }

    /// Shuts down the sending side (the peer reads end of stream); ENOTCONN is not an error.
    package func shutdownWrite(_ fd: Int32) {
        if let embeddedBackend { return embeddedBackend.shutdownWrite(fd) }
        try? Sockets.shutdown(systemDescriptor(fd), .write)
    }

    /// Makes the next close send RST (`SO_LINGER` 0).
    package func setAbortiveClose(_ fd: Int32) {
        if let embeddedBackend { return embeddedBackend.setAbortiveClose(fd) }
        try? Sockets.setAbortiveClose(systemDescriptor(fd))
    }

    /// Applies a connection's socket options (`TCP_NODELAY`, keepalive); failures are ignored, as a
    /// connection works without them. Nothing to do on an embedded stream.
    package func configureStream(_ fd: Int32, noDelay: Bool, keepAliveIdleSeconds: Int32?, receiveBufferSize: Int32? = nil) {
        if embeddedBackend != nil { return }
        try? Sockets.configureStream(systemDescriptor(fd), noDelay: noDelay, keepAliveIdleSeconds: keepAliveIdleSeconds,
                                     receiveBufferSize: receiveBufferSize)
    }

    /// Enters a socket this thread will run operations on in its ring's registered file table
    /// (``KernelFeatures/registeredFiles``): its operations then skip the kernel's file look-up. The
    /// descriptor stays an ordinary one; close it with ``closeDescriptor(_:)``, which takes it out. Does
    /// nothing for a direct descriptor (already there) or while the thread accepts direct descriptors
    /// (the kernel hands out the table's slots then).
    package func registerDescriptor(_ fd: Int32) {
        backend.registerDescriptor(fd)
    }

    /// Closes a socket this thread ran operations on. On io_uring the close (and the registered file
    /// table's update before it) goes out with the thread's next submission, before it next waits; a
    /// direct descriptor's slot is freed, and its installed ordinary descriptor, if any, closed.
    package func closeDescriptor(_ fd: Int32) {
        backend.closeDescriptor(fd)
    }

    /// The peer's address of a connected socket.
    package func peerAddress(_ fd: Int32) -> SocketAddress? {
        if let embeddedBackend { return embeddedBackend.stream(fd)?.remoteAddress }
        return try? Sockets.peerAddress(systemDescriptor(fd))
    }

    /// The local address of a socket.
    package func localAddress(_ fd: Int32) -> SocketAddress? {
        if let embeddedBackend { return embeddedBackend.stream(fd)?.localAddress }
        return try? Sockets.localAddress(systemDescriptor(fd))
    }
}
