#!/usr/bin/env bash
# Memory per idle connection: each server holds N idle connections (keel-bench hold, spread over
# 127.0.0.x sources); reports the server's RSS growth per connection (keel-io_uring-proxy: keel-echo
# --proxy-protocol, each connection opened with a v2 PROXY header). Then checks that one keel-echo
# process holds 19,000 connections (this machine allows 20,000 descriptors per process).
#
#   Benchmarks/memory.sh [connections=10000]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}
source Benchmarks/servers.sh
echo "building release binaries..." >&2
build_servers


measure() {  # server count [hold options] -> "established held growth_bytes_per_connection"
    start_server "$1"
    # Warm up with a short burst so lazily created pools and objects exist before the baseline.
    .build/release/keel-bench echo --port "$SERVER_PORT" --connections 10 --warmup 0 --duration 0.5 >/dev/null 2>&1 || true
    sleep 0.5
    local base
    base=$(rss_kb "$SERVER_PID")
    local out
    out=$(mktemp)
    .build/release/keel-bench hold --port "$SERVER_PORT" --count "$2" --duration 3 --json ${3:-} >"$out" 2>/dev/null &
    local client=$!
    local peak=$base
    while kill -0 "$client" 2>/dev/null; do
        local now
        now=$(rss_kb "$SERVER_PID")
        [ "$now" -gt "$peak" ] && peak=$now
        sleep 0.2
    done
    wait "$client" || true
    local established held
    established=$(sed 's/.*"connections": \([0-9]*\).*/\1/' "$out")
    held=$(sed 's/.*"held": \([0-9]*\).*/\1/' "$out")
    rm -f "$out"
    stop_server
    echo "$established $held $(( (peak - base) * 1024 / ($2 > 0 ? $2 : 1) ))"
}

echo "| server | connections established | held | RSS growth per connection (bytes) |"
echo "|---|---:|---:|---:|"
for server in keel-io_uring keel-io_uring-proxy keel-epoll nio c-io_uring; do
    extra=""
    [ "$server" = keel-io_uring-proxy ] && extra="--proxy-header v2"
    read -r established held per <<<"$(measure "$server" "$count" "$extra")"
    echo "| $server | $established | $held | $per |"
done
echo
read -r established held per <<<"$(measure keel-io_uring 19000)"
echo "keel-echo (io_uring) holding 19,000 connections: established $established, held $held, $per bytes each"
