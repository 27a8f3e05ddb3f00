#!/usr/bin/env bash
# Server CPU time per echoed message: keel-echo (callback API) against keel-async-echo (async API),
# each on both backends, driven by the same keel-echo-client load, interleaved and repeated.
#
#   scripts/compare-echo-cpu.sh [rounds=3] [connections=50] [messages=4000]
#
# CPU time comes from /proc/PID/stat (user + system ticks), so it is stable on a noisy machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
connections=${2:-50}
messages=${3:-4000}
swift build -c release --product keel-echo >/dev/null
swift build -c release --product keel-async-echo >/dev/null
swift build -c release --product keel-echo-client >/dev/null
bin=.build/release
tick=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

measure() {  # server backend -> prints ns of server CPU per message
    local server=$1 backend=$2 out pid port before after
    out=$(mktemp)
    "$bin/$server" --port 0 --threads 1 --backend "$backend" >"$out" 2>/dev/null &
    pid=$!
    for _ in $(seq 1 100); do grep -q "listening on" "$out" && break; sleep 0.05; done
    port=$(grep -o "listening on .*" "$out" | sed 's/.*://')
    before=$(cpu_ticks "$pid")
    "$bin/keel-echo-client" --port "$port" --connections "$connections" --messages "$messages" --size 64 >/dev/null 2>&1
    after=$(cpu_ticks "$pid")
    kill -TERM "$pid"
    wait "$pid" || true
    rm -f "$out"
    echo $(( (after - before) * 1000000000 / tick / (connections * messages) ))
}

declare -A results
for round in $(seq 1 "$rounds"); do
    for backend in io_uring epoll; do
        for server in keel-echo keel-async-echo; do
            results["$server $backend"]+="$(measure "$server" "$backend") "
        done
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "server CPU ns per echoed 64-byte message (median of $rounds; $connections connections × $messages ping-pong messages)"
for backend in io_uring epoll; do
    cb=$(echo "${results["keel-echo $backend"]}" | median)
    as=$(echo "${results["keel-async-echo $backend"]}" | median)
    echo "  $backend: callback $cb ns, async $as ns, async/callback $(awk "BEGIN {printf \"%.2f\", $as / $cb}")"
done
