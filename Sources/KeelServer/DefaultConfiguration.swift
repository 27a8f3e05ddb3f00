/// The configuration keel-server runs without `--config`, and prints with `--print-default-config`:
/// echo over TCP, UDP and WebSockets, a chat room, the key-value store and the admin listener, all on
/// loopback. Every key it does not set is shown commented out with its default.
public enum DefaultConfiguration {
    /// The YAML text.
    public static let yaml = """
    # keel-server configuration. Every endpoint: a name, where it listens, a transport, a framing (tcp
    # and tls only) and a plugin with its settings. Sizes take KiB/MiB/GiB, durations ms/s/m/h.

    shutdown-deadline: 10s          # SIGTERM/SIGINT: connections get this long to finish, then close abortively

    endpoints:
      - name: echo                  # like keel-echo: every chunk back as it came
        listen: 127.0.0.1:7007      # or a list: [127.0.0.1:7007, "[::1]:7007"]; *:7007 for every IPv4 address
        transport: tcp              # tcp, tls, udp, ws, wss
        framing: raw                # raw, line, length-prefixed, fixed
        plugin: echo
        # length-prefix-bytes: 4    # with framing: length-prefixed (1, 2, 4 or 8; big-endian)
        # fixed-size: 64            # with framing: fixed
        # limits:
        #   max-connections: 100000
        #   accept-rate: 1000       # connections accepted per second
        #   idle-timeout: 5m        # no traffic either way
        #   read-timeout: 30s       # nothing received
        #   max-message-bytes: 1MiB
        # flow-control:
        #   high-watermark: 256KiB  # queued for one peer before it counts as slow
        #   limit: 4MiB             # the most queued for one peer
        #   policy: disconnect      # at the limit: disconnect, drop-newest, drop-oldest
        #   pause-reading: true     # stop reading from a peer while its own queue is over the watermark
        # proxy-protocol: required  # or { trusted: [10.0.0.0/8] }
        # tls: { certificate: cert.pem, key: key.pem, client-ca: ca.pem, alpn: [h2, http/1.1] }

      - name: echo-udp              # every datagram back to its sender
        listen: 127.0.0.1:7007
        transport: udp
        plugin: echo
        limits:
          idle-timeout: 60s         # a UDP peer is forgotten after this long without a datagram

      - name: chat                  # line chat in rooms: /nick NAME, /join ROOM, /msg NAME TEXT, /who
        listen: 127.0.0.1:7008
        transport: tcp
        framing: line
        plugin: chat
        settings:
          room: lobby
        limits:
          max-message-bytes: 4KiB
        flow-control:
          limit: 1MiB               # a member that stops reading is disconnected past this

      - name: ws-echo               # WebSocket echo (browsers: ws://127.0.0.1:7009/)
        listen: 127.0.0.1:7009
        transport: ws
        plugin: echo
        websocket:
          compression: true         # permessage-deflate when the client offers it
          ping-interval: 30s
          # allowed-origins: [https://example.com]

      - name: kv                    # SET key value, GET key, DEL key, COUNT, SAVE
        listen: 127.0.0.1:7010
        transport: tcp
        framing: line
        plugin: kv
        settings:
          max-keys: 100000
          max-value-bytes: 64KiB
          # snapshot-file: kv.snapshot

    admin:                          # the status page (/) and /status.json: keep it on loopback
      listen: 127.0.0.1:7070

    """
}
