import CKeelLinux
import Glibc
import KeelSystem

/// The socket calls a connection makes at once (not through the ring): the inline send, the coalesced
/// `sendmsg`, shutdown, close. They go to the kernel through ``Sockets``, or, on an embedded thread, to
/// its in-memory streams, so the connection code that tests run is the code production runs.
///
/// I/O thread only, like the connection that makes them.
extension IOThread {
    /// Non-blocking send (never SIGPIPE); `urgent` sends out-of-band data.
    @inlinable
    package func send(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, urgent: Bool = false) throws(SystemError)
        -> IOOutcome<Int>
    {
        if let embeddedBackend { return try embeddedBackend.send(fd, bytes, urgent: urgent) }
        return try Sockets.send(fd, bytes, urgent: urgent)
    }

    /// The flush's send of one buffer (never SIGPIPE): the bytes the kernel took, or -errno (`-EAGAIN`
    /// when the socket is full). No error value is built: a flush makes one per connection per loop
    /// turn, and ``send(_:_:urgent:)``'s wrapping cost ~40 instructions of it (callgrind).
    @inlinable
    package func sendBytes(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int {
        if let embeddedBackend { return embeddedBackend.sendBytes(fd, bytes) }
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
        return try Sockets.sendMessage(fd, message)
    }

    /// Non-blocking receive into `buffer`; `urgent` takes the out-of-band byte. 0: end of stream.
    package func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, urgent: Bool = false)
        throws(SystemError) -> IOOutcome<Int>
    {
        if let embeddedBackend { return try embeddedBackend.receive(fd, into: buffer, urgent: urgent) }
        return try Sockets.receive(fd, into: buffer, urgent: urgent)
    }

    /// Shuts down the sending side (the peer reads end of stream); ENOTCONN is not an error.
    package func shutdownWrite(_ fd: Int32) {
        if let embeddedBackend { return embeddedBackend.shutdownWrite(fd) }
        try? Sockets.shutdown(fd, .write)
    }

    /// Makes the next close send RST (`SO_LINGER` 0).
    package func setAbortiveClose(_ fd: Int32) {
        if let embeddedBackend { return embeddedBackend.setAbortiveClose(fd) }
        try? Sockets.setAbortiveClose(fd)
    }

    /// Applies a connection's socket options (`TCP_NODELAY`, keepalive); failures are ignored, as a
    /// connection works without them. Nothing to do on an embedded stream.
    package func configureStream(_ fd: Int32, noDelay: Bool, keepAliveIdleSeconds: Int32?, receiveBufferSize: Int32? = nil) {
        if embeddedBackend != nil { return }
        try? Sockets.configureStream(fd, noDelay: noDelay, keepAliveIdleSeconds: keepAliveIdleSeconds,
                                     receiveBufferSize: receiveBufferSize)
    }

    /// Enters a socket this thread will run operations on in its ring's registered file table
    /// (``KernelFeatures/registeredFiles``): its operations then skip the kernel's file look-up. The
    /// descriptor stays an ordinary one; close it with ``closeDescriptor(_:)``, which takes it out.
    package func registerDescriptor(_ fd: Int32) {
        backend.registerDescriptor(fd)
    }

    /// Closes a socket this thread ran operations on. On io_uring the close (and the registered file
    /// table's update before it) goes out with the thread's next submission, before it next waits.
    package func closeDescriptor(_ fd: Int32) {
        backend.closeDescriptor(fd)
    }

    /// The peer's address of a connected socket.
    package func peerAddress(_ fd: Int32) -> SocketAddress? {
        if let embeddedBackend { return embeddedBackend.stream(fd)?.remoteAddress }
        return try? Sockets.peerAddress(fd)
    }

    /// The local address of a socket.
    package func localAddress(_ fd: Int32) -> SocketAddress? {
        if let embeddedBackend { return embeddedBackend.stream(fd)?.localAddress }
        return try? Sockets.localAddress(fd)
    }
}
