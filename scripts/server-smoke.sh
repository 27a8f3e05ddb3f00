#!/usr/bin/env bash
# The main job's smoke test: keel-server with its embedded configuration announces every listener,
# answers on its echo (TCP and UDP), key-value and status endpoints, and on SIGTERM drains and exits 0.
#
#   scripts/server-smoke.sh [path to keel-server, default .build/debug/keel-server]
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-.build/debug/keel-server}
out=$(mktemp)
"$server" >"$out" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 1 100); do grep -q "(admin)" "$out" && break; sleep 0.1; done
cat "$out"
first=$(grep -m1 "^listening on" "$out")
[ "$first" = "listening on 127.0.0.1:7007 (echo)" ] || { echo "first listener line was: $first"; exit 1; }
python3 - <<'PY'
import json, socket, urllib.request
s = socket.create_connection(("127.0.0.1", 7007), timeout=5)
s.sendall(b"hello keel-server")
data = b""
while len(data) < 17:
    chunk = s.recv(100)
    if not chunk:
        break
    data += chunk
assert data == b"hello keel-server", data
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b"datagram", ("127.0.0.1", 7007))
assert u.recvfrom(100)[0] == b"datagram"
k = socket.create_connection(("127.0.0.1", 7010), timeout=5)
k.sendall(b"SET greeting hi\nGET greeting\n")
answer = b""
while answer.count(b"\n") < 2:
    chunk = k.recv(100)
    if not chunk:
        break
    answer += chunk
assert answer == b"OK\nVALUE hi\n", answer
status = json.load(urllib.request.urlopen("http://127.0.0.1:7070/status.json", timeout=5))
echo = next(e for e in status["endpoints"] if e["name"] == "echo")
assert echo["messages_in"] >= 1 and echo["bytes_out"] == 17, echo
page = urllib.request.urlopen("http://127.0.0.1:7070/", timeout=5).read()
assert b"keel-server" in page
print("keel-server answered: echo (tcp, udp), kv, status.json, status page")
PY
kill -TERM "$pid"
wait "$pid"
grep -q "keel-server: stopped" "$out"
echo "keel-server drained and exited 0"
