#!/usr/bin/env bash
# WebSockets side by side: keel-ws-echo (io_uring, one thread, no compression) against a SwiftNIO
# NIOWebSocket echo server and a Hummingbird WebSocket echo server (one event loop thread each), the
# same keel-bench ws client (binary messages, every echo validated), interleaved and repeated. Reports
# medians of server CPU per message (user+system from /proc/PID/stat, over the whole run) and messages
# per second, and the ratios Keel / NIO and Keel / Hummingbird.
#
#   Benchmarks/compare-ws.sh [--repeats N] [--seconds S]
#
# Cases: 64 B and 16 KiB messages, 50 connections, depth 1 and 16.
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/servers.sh
parse_compare_options "$@"
echo "building release binaries..." >&2
swift build -c release --product keel-ws-echo >/dev/null
swift build -c release --product keel-bench >/dev/null
swift build -c release --package-path Benchmarks --product nio-ws-echo-server >/dev/null
swift build -c release --package-path Benchmarks --product hummingbird-ws-echo-server >/dev/null
bench=.build/release/keel-bench
tick=$(getconf CLK_TCK)

start_ws_server() {  # name -> SERVER_PID, SERVER_PORT
    case "$1" in
        keel) launch_server .build/release/keel-ws-echo --port 0 --threads 1 --backend io_uring --no-deflate ;;
        nio) launch_server Benchmarks/.build/release/nio-ws-echo-server 0 1 ;;
        hummingbird) launch_server Benchmarks/.build/release/hummingbird-ws-echo-server 0 1 ;;
    esac
}

results=$(mktemp)
servers=(keel nio hummingbird)
cases="ws:64:50:1 ws:64:50:16 ws:16384:50:1 ws:16384:50:16"
for round in $(seq 1 "$repeats"); do
    for c in $cases; do
        IFS=: read -r _ size conns depth <<<"$c"
        for i in 0 1 2; do
            server=${servers[$(( (i + round) % 3 ))]}
            start_ws_server "$server"
            before=$(cpu_ticks "$SERVER_PID")
            json=$("${CLIENT_CPU[@]}" "$bench" ws --port "$SERVER_PORT" -c "$conns" -s "$size" -p "$depth" \
                --warmup 0 --duration "$seconds" --json 2>/dev/null || echo '{"count": 0, "rate": 0}')
            after=$(cpu_ticks "$SERVER_PID")
            stop_server
            count=$(field "$json" count) rate=$(field "$json" rate)
            cpu_ns=$(awk "BEGIN { if ($count > 0) printf \"%.0f\", ($after - $before) * 1e9 / $tick / $count; else print 0 }")
            echo "$c $server $rate $cpu_ns $round" >>"$results"
            echo "round $round $c $server: $rate/s, $cpu_ns ns server CPU per message" >&2
        done
    done
done

ratio() {  # case column(3 rate, 4 cpu) reference-server
    awk -v c="$1" -v k="$2" -v other="$3" '$1==c && $2=="keel" {mine[$5]=$k} $1==c && $2==other {ref[$5]=$k}
        END {for (r in mine) if (ref[r] > 0) printf "%.4f\n", mine[r] / ref[r]}' "$results" | median | awk '{printf "%.2f", $1}'
}
value() { awk -v c="$1" -v s="$2" -v k="$3" '$1==c && $2==s {print $k}' "$results" | median; }
echo
echo "WebSocket echo (binary, no compression), one server thread each, keel-bench ws client; medians of $repeats runs of ${seconds}s."
echo "CPU = server user+system time per echoed message."
echo
echo "| case (size:conns:depth) | Keel msg/s | NIO msg/s | Hummingbird msg/s | Keel CPU ns | NIO CPU ns | HB CPU ns | CPU Keel/NIO | CPU Keel/HB | rate Keel/NIO |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $cases; do
    echo "| ${c#ws:} | $(value "$c" keel 3) | $(value "$c" nio 3) | $(value "$c" hummingbird 3) | $(value "$c" keel 4) | $(value "$c" nio 4)" \
         "| $(value "$c" hummingbird 4) | $(ratio "$c" 4 nio) | $(ratio "$c" 4 hummingbird) | $(ratio "$c" 3 nio) |"
done
rm -f "$results"
