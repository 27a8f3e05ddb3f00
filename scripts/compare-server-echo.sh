#!/usr/bin/env bash
# Server CPU time per echoed message: keel-server's echo endpoint (the plugin path: endpoint runtime,
# peer, session) against keel-echo (a handler written straight on KeelSockets), each with one I/O
# thread on the given backend, driven by the same keel-echo-client load, interleaved and repeated.
#
#   scripts/compare-server-echo.sh [rounds=5] [connections=50] [messages=4000] [backend=io_uring]
#
# CPU time comes from /proc/PID/stat (user + system ticks), so it is stable on a noisy machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
connections=${2:-50}
messages=${3:-4000}
backend=${4:-io_uring}
for product in keel-echo keel-server keel-echo-client; do swift build -c release --product "$product" >/dev/null; done
bin=.build/release
tick=$(getconf CLK_TCK)
config=$(mktemp --suffix .yaml)
trap 'rm -f "$config"' EXIT
cat >"$config" <<YAML
endpoints:
  - { name: echo, listen: 127.0.0.1:0, transport: tcp, framing: raw, plugin: echo }
YAML

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

measure() {  # server -> prints ns of server CPU per message
    local server=$1 out pid port before after
    out=$(mktemp)
    if [ "$server" = keel-server ]; then
        "$bin/keel-server" --config "$config" --threads 1 --backend "$backend" --log-level error >"$out" 2>/dev/null &
    else
        "$bin/keel-echo" --port 0 --threads 1 --backend "$backend" >"$out" 2>/dev/null &
    fi
    pid=$!
    for _ in $(seq 1 100); do grep -q "listening on" "$out" && break; sleep 0.05; done
    port=$(grep -o "listening on [^ ]*" "$out" | head -1 | sed 's/.*://')
    before=$(cpu_ticks "$pid")
    "$bin/keel-echo-client" --port "$port" --connections "$connections" --messages "$messages" --size 64 >/dev/null 2>&1
    after=$(cpu_ticks "$pid")
    kill -TERM "$pid"
    wait "$pid" || true
    rm -f "$out"
    echo $(( (after - before) * 1000000000 / tick / (connections * messages) ))
}

echo_runs=""
server_runs=""
ratios=""
for round in $(seq 1 "$rounds"); do
    e=$(measure keel-echo)
    s=$(measure keel-server)
    echo_runs+="$e "
    server_runs+="$s "
    ratios+="$(awk "BEGIN {printf \"%.3f\", $s / $e}") "
    echo "round $round: keel-echo $e ns, keel-server $s ns"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "server CPU ns per echoed 64-byte message on $backend (median of $rounds; $connections connections × $messages ping-pong messages):"
echo "  keel-echo $(echo "$echo_runs" | median) ns, keel-server echo endpoint $(echo "$server_runs" | median) ns, median per-round ratio $(echo "$ratios" | median)"
