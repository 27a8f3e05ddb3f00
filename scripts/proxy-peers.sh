#!/usr/bin/env bash
# Keel behind real PROXY protocol senders, on loopback: HAProxy (send-proxy, send-proxy-v2; IPv4 and
# IPv6 fronts) and nginx's stream module (proxy_protocol on) in front of keel-echo --proxy-protocol,
# with the configurations in scripts/proxy/. Through each front a client bound to its own 127.0.0.x
# source address (::1 for the IPv6 front) sends 64 KiB that must come back byte for byte, and
# keel-echo's debug log must name that client's address and port, not the balancer's.
#
#   scripts/proxy-peers.sh            (installs haproxy and nginx from Debian's packages when missing)
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx-light libnginx-mod-stream)
if [ ${#need[@]} -gt 0 ]; then
    # No service may start on its own during the install (policy-rc.d 101: "action forbidden").
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
stream_module=$(ls /usr/lib/nginx/modules/ngx_stream_module.so)

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

swift build --product keel-echo >/dev/null
.build/debug/keel-echo --port 0 --threads 1 --proxy-protocol --log-level debug >"$work/keel.out" 2>"$work/keel.log" &
pids+=($!)
for _ in $(seq 1 100); do grep -q "listening on" "$work/keel.out" && break; sleep 0.1; done
keel_port=$(grep -o "listening on .*" "$work/keel.out" | sed 's/.*://')

read -r v1_port v2_port v2_ipv6_port nginx_port < <(python3 - <<'PY'
import socket
ports = []
keep = []
for family, host in [(socket.AF_INET, "127.0.0.1")] * 2 + [(socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")]:
    s = socket.socket(family)
    s.bind((host, 0))
    keep.append(s)
    ports.append(str(s.getsockname()[1]))
print(" ".join(ports))
PY
)
fill() {  # template output
    sed -e "s|@KEEL_PORT@|$keel_port|g" -e "s|@V1_PORT@|$v1_port|g" -e "s|@V2_PORT@|$v2_port|g" \
        -e "s|@V2_IPV6_PORT@|$v2_ipv6_port|g" -e "s|@NGINX_PORT@|$nginx_port|g" -e "s|@WORK@|$work|g" \
        -e "s|@STREAM_MODULE@|$stream_module|g" "$1" >"$2"
}
fill scripts/proxy/haproxy.cfg "$work/haproxy.cfg"
fill scripts/proxy/nginx.conf "$work/nginx.conf"
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
nginx -c "$work/nginx.conf" -p "$work" >"$work/nginx.out" 2>&1 &
pids+=($!)

python3 - "$work/keel.log" "$v1_port" "$v2_port" "$v2_ipv6_port" "$nginx_port" <<'PY'
import socket, sys, time
log, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
fronts = [("haproxy send-proxy (v1)", "127.0.0.1", ports[0], "127.0.0.21"),
          ("haproxy send-proxy-v2", "127.0.0.1", ports[1], "127.0.0.22"),
          ("haproxy send-proxy-v2, IPv6 front", "::1", ports[2], "::1"),
          ("nginx stream proxy_protocol (v1)", "127.0.0.1", ports[3], "127.0.0.24")]
payload = bytes((i * 31 + i // 251) % 256 for i in range(65536))

def connect(host, port, source):
    deadline = time.time() + 10
    while True:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family)
        s.settimeout(10)
        s.bind((source, 0))
        try:
            s.connect((host, port))
            return s
        except OSError:
            s.close()
            if time.time() > deadline:
                raise
            time.sleep(0.1)

failures = 0
for name, host, port, source in fronts:
    s = connect(host, port, source)
    client = s.getsockname()
    s.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    shown = f"[{client[0]}]:{client[1]}" if ":" in client[0] else f"{client[0]}:{client[1]}"
    seen = False
    for _ in range(50):
        if f"connection from {shown}" in open(log).read():
            seen = True
            break
        time.sleep(0.1)
    ok = got == payload and seen
    failures += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {name}: echo {'intact' if got == payload else f'differs ({len(got)} of {len(payload)} bytes)'}, "
          f"keel-echo saw the client as {shown}: {seen}")
sys.exit(1 if failures else 0)
PY
echo "proxy-peers: HAProxy (v1, v2, IPv6) and nginx (v1) in front of keel-echo: the client's address reached the server"
