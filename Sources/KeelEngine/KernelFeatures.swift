import CKeelLinux
import Glibc
import Logging

/// Optional kernel features Keel uses where the kernel has them: io_uring ones (probed when each
/// thread's ring is set up; none on epoll) and socket ones (probed once per process, on either
/// backend). A feature the kernel lacks is left out without error; the pool logs the set in use once
/// per process (`keel kernel features: ...`). Turn features off with
/// ``IOPoolConfiguration/kernelFeatures`` or the `KEEL_FEATURES_OFF` environment variable (a
/// comma-separated list of names, or `all`).
public struct KernelFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The ring's own descriptor is registered with its thread, so each `io_uring_enter` skips the
    /// file-table look-up (`IORING_REGISTER_RING_FDS`, Linux 5.18).
    public static let registeredRing = KernelFeatures(rawValue: 1 << 0)
    /// Large TCP writes go out with `IORING_OP_SENDMSG_ZC` (Linux 6.1): the kernel sends from the
    /// pooled buffers instead of copying them, and holds them until its notification completion. See
    /// ``TCPConnectionOptions``' `zeroCopySendThreshold` in KeelSockets.
    public static let zeroCopySend = KernelFeatures(rawValue: 1 << 1)
    /// UDP segmentation offload (`UDP_SEGMENT`, Linux 4.18; a socket feature): a UDP socket sends a
    /// loop iteration's run of equal-sized datagrams to one destination as one `sendmsg`, which the
    /// kernel carries as one packet through the stack and splits at the end.
    public static let udpSegmentation = KernelFeatures(rawValue: 1 << 2)
    /// UDP receive coalescing (`UDP_GRO`, Linux 5.0; a socket feature): the kernel hands a run of
    /// datagrams from one sender over in one receive. Used by sockets whose pool buffers hold a whole
    /// run (see `UDPSocketConfiguration.receivesDatagramRuns` in KeelSockets).
    public static let udpReceiveCoalescing = KernelFeatures(rawValue: 1 << 3)
    /// Connection sockets are also entered in the ring's registered file table (`IORING_REGISTER_FILES2`
    /// sparse, Linux 5.19; filled with `IORING_OP_FILES_UPDATE`), and the ring's operations on them name
    /// the table slot (`IOSQE_FIXED_FILE`), so the kernel skips the file-table look-up and the file
    /// reference count per operation. The socket keeps its ordinary descriptor too, for the calls Keel
    /// makes outside the ring and for handlers that use it. The table has one slot per descriptor
    /// number, up to the soft `RLIMIT_NOFILE` (at most 65,536 slots); higher descriptors go without.
    public static let registeredFiles = KernelFeatures(rawValue: 1 << 4)
    /// A connection's pooled receive takes up to four pool buffers in one go when that much data waits
    /// (`IORING_RECVSEND_BUNDLE` with a per-completion cap, Linux 6.17): one completion and one socket
    /// read for what would otherwise be one of each per buffer. The buffers still reach the handler
    /// one by one.
    public static let receiveBundles = KernelFeatures(rawValue: 1 << 5)
    /// The thread's buffer pool is registered with its ring slab by slab (`IORING_REGISTER_BUFFERS2`
    /// sparse, then one `IORING_REGISTER_BUFFERS_UPDATE` per slab as the pool maps it), and a zero-copy
    /// send whose buffers all lie in one slab names that slab (`IORING_RECVSEND_FIXED_BUF`, vectored
    /// from Linux 6.15), so the kernel skips pinning and unpinning the pages of each send. Linux 6.18
    /// honours registered buffers only on zero-copy sends; a slab past the memlock limit goes without.
    public static let registeredBuffers = KernelFeatures(rawValue: 1 << 6)
    /// Accepted sockets are direct descriptors (needs ``registeredFiles`` and Linux 6.8): a server's
    /// multishot accept puts each connection in a free slot of its thread's registered file table
    /// (`IORING_FILE_INDEX_ALLOC`) and never in the process's descriptor table, its operations name the
    /// slot, and its close frees the slot, so accepting and closing skip the descriptor table's
    /// allocation, installation and removal. A call that needs an ordinary descriptor (the peer's or
    /// local address, a socket option, out-of-band data, shutdown) gets one installed on first use
    /// (`IORING_OP_FIXED_FD_INSTALL`), closed with the connection. Used by acceptors whose connections
    /// stay on their own thread (one `SO_REUSEPORT` listener per thread, or one thread) and have no
    /// filters (whose setup reads both addresses, so each would install one at once); outgoing
    /// connections and UDP sockets keep ordinary descriptors, and while this is in use they are not
    /// entered in the table, whose slots the kernel hands out.
    public static let directDescriptors = KernelFeatures(rawValue: 1 << 7)
    /// Operations whose outcome nobody waits for (a connection's close, registered-table updates,
    /// cancels) post no completion when they succeed (`IOSQE_CQE_SKIP_SUCCESS`, Linux 5.17): the
    /// kernel fills, and the thread reaps, one completion fewer for each. A failure still posts one.
    public static let completionSkipping = KernelFeatures(rawValue: 1 << 8)

    /// Every feature Keel knows.
    public static let all: KernelFeatures = [
        .registeredRing, .registeredFiles, .directDescriptors, .receiveBundles, .zeroCopySend, .registeredBuffers,
        .completionSkipping, .udpSegmentation, .udpReceiveCoalescing,
    ]
    /// The features of an io_uring ring.
    public static let ringFeatures: KernelFeatures = [
        .registeredRing, .registeredFiles, .directDescriptors, .receiveBundles, .zeroCopySend, .registeredBuffers,
        .completionSkipping,
    ]
    /// The socket features, probed once per process.
    public static let socketFeatures: KernelFeatures = [.udpSegmentation, .udpReceiveCoalescing]

    /// Each feature with the name logs, configuration and `KEEL_FEATURES_OFF` use.
    public static let named: [(feature: KernelFeatures, name: String)] = [
        (.registeredRing, "registered-ring"),
        (.registeredFiles, "registered-files"),
        (.directDescriptors, "direct-descriptors"),
        (.receiveBundles, "receive-bundles"),
        (.zeroCopySend, "zero-copy-send"),
        (.registeredBuffers, "registered-buffers"),
        (.completionSkipping, "cqe-skip"),
        (.udpSegmentation, "udp-gso"),
        (.udpReceiveCoalescing, "udp-gro"),
    ]

    /// The socket features this kernel has (a throwaway socket tries each option once per process).
    public static let availableSocketFeatures: KernelFeatures = {
        var available: KernelFeatures = []
        if ckeel_udp_segmentation_supported() == 1 { available.insert(.udpSegmentation) }
        if ckeel_udp_gro_supported() == 1 { available.insert(.udpReceiveCoalescing) }
        return available
    }()

    /// Parses a comma-separated list of feature names (`all` and `none` included).
    /// - Returns: nil when a name is unknown.
    public init?(names: String) {
        var features: KernelFeatures = []
        for raw in names.split(separator: ",") {
            let name = raw.filter { $0 != " " }.lowercased()
            if name == "all" {
                features.formUnion(.all)
            } else if name == "none" || name.isEmpty {
                continue
            } else if let entry = Self.named.first(where: { $0.name == name }) {
                features.formUnion(entry.feature)
            } else {
                return nil
            }
        }
        self = features
    }

    /// The names, comma-separated, or `none`.
    public var description: String {
        let names = Self.named.filter { contains($0.feature) }.map(\.name)
        return names.isEmpty ? "none" : names.joined(separator: ", ")
    }

    /// The environment variable that turns features off: `KEEL_FEATURES_OFF`.
    public static let disablingEnvironmentVariable = "KEEL_FEATURES_OFF"

    /// The features `KEEL_FEATURES_OFF` turns off (none when unset; an unknown name is reported and
    /// ignored).
    public static var turnedOffByEnvironment: KernelFeatures {
        guard let raw = getenv(disablingEnvironmentVariable).map({ String(cString: $0) }), !raw.isEmpty else { return [] }
        if let features = KernelFeatures(names: raw) { return features }
        BackendKind.logger.warning("ignoring \(disablingEnvironmentVariable)=\(raw): expected names from \(KernelFeatures.all) or all")
        return []
    }
}
