#!/usr/bin/env bash
# User-space instructions per echoed message in keel-echo, counted by valgrind's callgrind: repeatable
# on a noisy machine, unlike time. Runs keel-echo (release, debug info stripped: valgrind chokes on
# Swift's) under callgrind twice, with M and 3M messages per connection from keel-bench, and reports
# the difference per message, in total and per function (the top 30).
#
#   scripts/instructions-per-message.sh [--depth D] [--connections C] [--messages M]
#   scripts/instructions-per-message.sh --storm [--seconds S]
#
# KEEP_CALLGRIND=DIR keeps both profiles (small.out, large.out) in DIR; TOP=N lists N functions.
# --storm counts instructions per connection of a connect storm instead (keel-bench storm, 32 in
# progress, each connect, one 64-byte echo, close), from runs of S and 3S seconds.
# Runs on the epoll backend: valgrind 3.19 blocks the whole process in io_uring_enter (the I/O thread
# holds valgrind's lock), so an io_uring keel-echo never starts under it.
set -euo pipefail
cd "$(dirname "$0")/.."
depth=1 connections=10 messages=1000 storm=0 seconds=4
while [ $# -gt 0 ]; do
    case "$1" in
        --storm) storm=1 ;;
        --seconds) seconds=$2; shift ;;
        --depth) depth=$2; shift ;;
        --connections) connections=$2; shift ;;
        --messages) messages=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
swift build -c release --product keel-echo >/dev/null
swift build -c release --product keel-bench >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp .build/release/keel-echo "$work/keel-echo"
strip --strip-debug "$work/keel-echo"

run() {  # messages-per-connection (storm: seconds) output-file
    local log="$work/server.log" port
    KEEL_BACKEND=epoll valgrind --tool=callgrind --callgrind-out-file="$2" "$work/keel-echo" --port 0 --threads 1 >"$log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 300); do grep -q "listening on" "$log" && break; sleep 0.1; done
    port=$(grep -o "listening on .*" "$log" | sed 's/.*://')
    if [ "$storm" = 1 ]; then
        .build/release/keel-bench storm --port "$port" --concurrency 32 --duration "$1" --warmup 0 --json \
            >"$work/client.json" 2>/dev/null || true
    else
        .build/release/keel-bench echo --port "$port" --connections "$connections" --depth "$depth" \
            --messages "$1" --warmup 0 --json >"$work/client.json" 2>/dev/null
    fi
    kill -TERM "$pid"
    wait "$pid" || true
    sed 's/.*"count": \([0-9]*\).*/\1/' "$work/client.json"
}
if [ "$storm" = 1 ]; then
    small_count=$(run "$seconds" "$work/small.out")
    large_count=$(run $((seconds * 3)) "$work/large.out")
    per=$((large_count - small_count)) unit=connection
else
    run "$messages" "$work/small.out" >/dev/null
    run $((messages * 3)) "$work/large.out" >/dev/null
    per=$((messages * 2 * connections)) unit="echoed message"
fi
if [ -n "${KEEP_CALLGRIND:-}" ]; then  # keep the profiles (e.g. for callgrind_annotate --tree=caller)
    mkdir -p "$KEEP_CALLGRIND" && cp "$work/small.out" "$work/large.out" "$KEEP_CALLGRIND/"
fi
UNIT=$unit python3 - "$work/small.out" "$work/large.out" "$per" <<'PY'
import re, subprocess, sys

def functions(path):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", path], capture_output=True, text=True).stdout
    counts = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+\S*?:(\S+)", line)
        if m:
            name = re.sub(r"\$s\d*", "", m.group(2))
            counts[name] = counts.get(name, 0) + int(m.group(1).replace(",", ""))
    return counts

small, large, extra = functions(sys.argv[1]), functions(sys.argv[2]), float(sys.argv[3])
deltas = sorted(((large.get(k, 0) - small.get(k, 0)) / extra, k) for k in set(small) | set(large))
deltas.reverse()
print("user-space instructions per %s: %.0f" % (__import__("os").environ["UNIT"], sum(d for d, _ in deltas)))
for d, name in deltas[:int(__import__("os").environ.get("TOP", "30"))]:
    print("%7.0f  %s" % (d, name[:120]))
PY
