import CKeelLinux
import Glibc
import SystemPackage

/// Socket system calls: creation, options, bind/listen, addresses, shutdown. Each retries EINTR and
/// throws ``SystemError`` naming the call.
public enum Sockets {
    /// Creates a non-blocking, close-on-exec stream socket for `family` (`AF_INET`/`AF_INET6`).
    public static func makeStreamSocket(family: Int32) throws(SystemError) -> Int32 {
        try retryingSyscall("socket") { socket(family, CKEEL_SOCK_STREAM | CKEEL_SOCK_NONBLOCK_CLOEXEC, 0) }
    }

    /// Creates a non-blocking, close-on-exec datagram socket for `family`.
    public static func makeDatagramSocket(family: Int32) throws(SystemError) -> Int32 {
        try retryingSyscall("socket") { socket(family, CKEEL_SOCK_DGRAM | CKEEL_SOCK_NONBLOCK_CLOEXEC, 0) }
    }

    /// Sets an integer socket option.
    public static func setOption(_ fd: Int32, level: Int32, name: Int32, value: Int32, _ call: StaticString)
        throws(SystemError)
    {
        var value = value
        _ = try retryingSyscall(call, context: "fd \(fd)") {
            setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// `SO_REUSEADDR`: rebind a listening port while old connections sit in TIME_WAIT.
    public static func setReuseAddress(_ fd: Int32, _ on: Bool = true) throws(SystemError) {
        try setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: on ? 1 : 0, "setsockopt(SO_REUSEADDR)")
    }

    /// `SO_REUSEPORT`: several listeners on one port, the kernel spreading connections among them.
    public static func setReusePort(_ fd: Int32, _ on: Bool = true) throws(SystemError) {
        try setOption(fd, level: SOL_SOCKET, name: SO_REUSEPORT, value: on ? 1 : 0, "setsockopt(SO_REUSEPORT)")
    }

    /// `TCP_NODELAY`: send small segments at once instead of waiting to coalesce (Nagle off).
    public static func setNoDelay(_ fd: Int32, _ on: Bool = true) throws(SystemError) {
        try setOption(fd, level: Int32(IPPROTO_TCP), name: TCP_NODELAY, value: on ? 1 : 0, "setsockopt(TCP_NODELAY)")
    }

    /// `IPV6_V6ONLY`.
    public static func setIPv6Only(_ fd: Int32, _ on: Bool) throws(SystemError) {
        try setOption(fd, level: Int32(IPPROTO_IPV6), name: IPV6_V6ONLY, value: on ? 1 : 0, "setsockopt(IPV6_V6ONLY)")
    }

    /// TCP keepalive: probe an idle connection after `idle` seconds, every `interval` seconds, and
    /// drop it after `count` unanswered probes. `nil` turns keepalive off.
    public static func setKeepAlive(_ fd: Int32, idle: Int32?, interval: Int32 = 10, count: Int32 = 5)
        throws(SystemError)
    {
        guard let idle else {
            return try setOption(fd, level: SOL_SOCKET, name: SO_KEEPALIVE, value: 0, "setsockopt(SO_KEEPALIVE)")
        }
        try setOption(fd, level: SOL_SOCKET, name: SO_KEEPALIVE, value: 1, "setsockopt(SO_KEEPALIVE)")
        try setOption(fd, level: Int32(IPPROTO_TCP), name: TCP_KEEPIDLE, value: idle, "setsockopt(TCP_KEEPIDLE)")
        try setOption(fd, level: Int32(IPPROTO_TCP), name: TCP_KEEPINTVL, value: interval, "setsockopt(TCP_KEEPINTVL)")
        try setOption(fd, level: Int32(IPPROTO_TCP), name: TCP_KEEPCNT, value: count, "setsockopt(TCP_KEEPCNT)")
    }

    /// `SO_LINGER` with a zero timeout: the next `close` sends RST and skips TIME_WAIT.
    public static func setAbortiveClose(_ fd: Int32) throws(SystemError) {
        var value = linger(l_onoff: 1, l_linger: 0)
        _ = try retryingSyscall("setsockopt(SO_LINGER)", context: "fd \(fd)") {
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &value, socklen_t(MemoryLayout<linger>.size))
        }
    }

    /// `SO_SNDBUF` / `SO_RCVBUF`.
    public static func setBufferSizes(_ fd: Int32, send: Int32?, receive: Int32?) throws(SystemError) {
        if let send { try setOption(fd, level: SOL_SOCKET, name: SO_SNDBUF, value: send, "setsockopt(SO_SNDBUF)") }
        if let receive { try setOption(fd, level: SOL_SOCKET, name: SO_RCVBUF, value: receive, "setsockopt(SO_RCVBUF)") }
    }

    /// A stream socket's per-connection options in one call: no-delay (when `noDelay`), keepalive
    /// after `keepAliveIdleSeconds` (when set) and the receive buffer size (when set). On a listener
    /// they carry over to every socket it accepts (Linux copies them at accept).
    public static func configureStream(_ fd: Int32, noDelay: Bool, keepAliveIdleSeconds: Int32?, receiveBufferSize: Int32?)
        throws(SystemError)
    {
        if noDelay { try setNoDelay(fd) }
        if let keepAliveIdleSeconds { try setKeepAlive(fd, idle: keepAliveIdleSeconds) }
        if let receiveBufferSize { try setBufferSizes(fd, send: nil, receive: receiveBufferSize) }
    }

    /// Binds `fd` to `address`.
    public static func bind(_ fd: Int32, to address: SocketAddress) throws(SystemError) {
        _ = try address.withSockAddr { (sa, length) throws(SystemError) -> Int32 in
            try retryingSyscall("bind", context: "\(address)") { Glibc.bind(fd, sa, length) }
        }
    }

    /// Starts listening with `backlog` pending connections.
    public static func listen(_ fd: Int32, backlog: Int32) throws(SystemError) {
        _ = try retryingSyscall("listen", context: "fd \(fd)") { Glibc.listen(fd, backlog) }
    }

    /// The local address of `fd` (e.g. the port the kernel chose for port 0).
    public static func localAddress(_ fd: Int32) throws(SystemError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try withUnsafeMutableBytes(of: &storage) { (raw) throws(SystemError) -> Int32 in
            try retryingSyscall("getsockname", context: "fd \(fd)") {
                getsockname(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
            }
        }
        return SocketAddress(storage: storage, length: length)
    }

    /// The peer address of a connected `fd`.
    public static func peerAddress(_ fd: Int32) throws(SystemError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try withUnsafeMutableBytes(of: &storage) { (raw) throws(SystemError) -> Int32 in
            try retryingSyscall("getpeername", context: "fd \(fd)") {
                getpeername(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
            }
        }
        return SocketAddress(storage: storage, length: length)
    }

    /// Which direction(s) ``shutdown(_:_:)`` closes.
    public enum Direction: Sendable {
        case read, write, both
    }

    /// Shuts down one or both directions; ENOTCONN (the peer already went) is not an error.
    public static func shutdown(_ fd: Int32, _ direction: Direction) throws(SystemError) {
        let how: Int32
        switch direction {
        case .read: how = Int32(SHUT_RD)
        case .write: how = Int32(SHUT_WR)
        case .both: how = Int32(SHUT_RDWR)
        }
        if Glibc.shutdown(fd, how) == 0 { return }
        let code = ckeel_errno()
        if code == ENOTCONN { return }
        throw SystemError(code: code, call: "shutdown", context: "fd \(fd)")
    }

    /// Non-blocking send (never SIGPIPE). `urgent` sends out-of-band data.
    public static func send(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, urgent: Bool = false)
        throws(SystemError) -> IOOutcome<Int>
    {
        let flags = Int32(CKEEL_MSG_NOSIGNAL | (urgent ? CKEEL_MSG_OOB : 0))
        return try nonBlockingSyscall("send", context: "fd \(fd)") { ckeel_send(fd, bytes.baseAddress, bytes.count, flags) }
    }

    /// Non-blocking receive into `buffer` (0: end of stream). `urgent` takes the out-of-band byte
    /// (`MSG_OOB`) instead of stream data.
    public static func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, urgent: Bool = false)
        throws(SystemError) -> IOOutcome<Int>
    {
        let flags = urgent ? Int32(CKEEL_MSG_OOB) : 0
        return try nonBlockingSyscall("recv", context: "fd \(fd)") { ckeel_recv(fd, buffer.baseAddress, buffer.count, flags) }
    }

    /// Non-blocking `sendmsg` (never SIGPIPE).
    public static func sendMessage(_ fd: Int32, _ message: UnsafePointer<msghdr>) throws(SystemError) -> IOOutcome<Int> {
        try nonBlockingSyscall("sendmsg", context: "fd \(fd)") { ckeel_sendmsg(fd, message, Int32(CKEEL_MSG_NOSIGNAL)) }
    }

    /// Connects a datagram socket to `peer` (a datagram connect completes at once: it only sets the
    /// default destination and filters what is received).
    public static func connectDatagram(_ fd: Int32, to peer: SocketAddress) throws(SystemError) {
        _ = try peer.withSockAddr { (sa, length) throws(SystemError) -> Int32 in
            try retryingSyscall("connect(udp)", context: "\(peer)") { Glibc.connect(fd, sa, length) }
        }
    }

    /// Joins (or leaves) multicast `group` on the interface with index `interfaceIndex` (0: the
    /// kernel's choice): `IP_ADD_MEMBERSHIP`/`IP_DROP_MEMBERSHIP` or `IPV6_ADD_MEMBERSHIP`/`IPV6_DROP_MEMBERSHIP`.
    public static func changeMulticastMembership(_ fd: Int32, group: SocketAddress, interfaceIndex: Int32, join: Bool)
        throws(SystemError)
    {
        if group.family == .ipv4 {
            var request = ip_mreqn()
            group.withSockAddr { sa, _ in
                request.imr_multiaddr = UnsafeRawPointer(sa).assumingMemoryBound(to: sockaddr_in.self).pointee.sin_addr
            }
            request.imr_ifindex = interfaceIndex
            _ = try retryingSyscall(join ? "setsockopt(IP_ADD_MEMBERSHIP)" : "setsockopt(IP_DROP_MEMBERSHIP)") {
                setsockopt(fd, Int32(IPPROTO_IP), join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP,
                           &request, socklen_t(MemoryLayout<ip_mreqn>.size))
            }
        } else {
            var request = ipv6_mreq()
            group.withSockAddr { sa, _ in
                request.ipv6mr_multiaddr = UnsafeRawPointer(sa).assumingMemoryBound(to: sockaddr_in6.self).pointee.sin6_addr
            }
            request.ipv6mr_interface = UInt32(interfaceIndex)
            _ = try retryingSyscall(join ? "setsockopt(IPV6_JOIN_GROUP)" : "setsockopt(IPV6_LEAVE_GROUP)") {
                setsockopt(fd, Int32(IPPROTO_IPV6), join ? IPV6_ADD_MEMBERSHIP : IPV6_DROP_MEMBERSHIP,
                           &request, socklen_t(MemoryLayout<ipv6_mreq>.size))
            }
        }
    }

    /// The first stream-socket address `host` resolves to, with `getaddrinfo` (numeric hosts are
    /// parsed without a lookup). Blocking: run it on a work pool, never on an I/O thread.
    public static func resolve(host: String, port: UInt16) throws(SystemError) -> SocketAddress {
        if let numeric = try? SocketAddress(host: host, port: port) { return numeric }
        var hints = addrinfo()
        hints.ai_socktype = CKEEL_SOCK_STREAM
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw SystemError(.noSuchAddressOrDevice, call: "getaddrinfo", context: "\(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var storage = sockaddr_storage()
        withUnsafeMutableBytes(of: &storage) { raw in
            raw.baseAddress!.copyMemory(from: first.pointee.ai_addr, byteCount: Int(first.pointee.ai_addrlen))
        }
        return SocketAddress(storage: storage, length: first.pointee.ai_addrlen)
    }
}
