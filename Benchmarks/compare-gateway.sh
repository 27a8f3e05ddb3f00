#!/usr/bin/env bash
# TCP relays side by side: keel-gateway (io_uring, one I/O thread) against HAProxy in `mode tcp`
# (nbthread 1, Debian's package, installed when missing), both relaying to the same keel-echo back-end,
# driven by the same keel-bench relay client (every byte validated), interleaved and repeated. Reports
# medians of the relay's CPU per message (user+system from /proc/PID/stat over the run), messages per
# second and p99 round-trip latency, and the per-round ratios Keel / HAProxy.
#
#   Benchmarks/compare-gateway.sh [--repeats N] [--seconds S]
#
# Cases: 64 B and 16 KiB messages, 50 and 500 connections, depth 1. The relay runs pinned to the last
# CPU; the back-end and the client share the first (servers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/servers.sh
parse_compare_options "$@"
command -v haproxy >/dev/null || { echo "installing haproxy..." >&2; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy >/dev/null; }
echo "building release binaries..." >&2
for product in keel-gateway keel-echo keel-bench; do swift build -c release --product "$product" >/dev/null; done
bench=.build/release/keel-bench
tick=$(getconf CLK_TCK)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The back-end, on the client's CPU, for the whole run.
"${CLIENT_CPU[@]}" .build/release/keel-echo --port 0 --threads 1 --backend io_uring >"$work/echo.out" 2>/dev/null &
ECHO_PID=$!
for _ in $(seq 1 200); do grep -q "listening on" "$work/echo.out" && break; sleep 0.05; done
ECHO_PORT=$(grep -o "listening on .*" "$work/echo.out" | sed 's/.*://')
trap 'kill -TERM $ECHO_PID 2>/dev/null; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_relay() {  # name -> SERVER_PID, SERVER_PORT
    case "$1" in
        keel) launch_server .build/release/keel-gateway --port 0 --threads 1 --io-backend io_uring \
                  --backend "127.0.0.1:$ECHO_PORT" ;;
        haproxy)
            SERVER_PORT=$(free_port)
            cat >"$work/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend relay
    bind 127.0.0.1:$SERVER_PORT
    default_backend echo
backend echo
    server echo1 127.0.0.1:$ECHO_PORT
CFG
            "${SERVER_CPU[@]}" haproxy -db -f "$work/haproxy.cfg" >/dev/null 2>&1 &
            SERVER_PID=$!
            for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$SERVER_PORT") 2>/dev/null && break; sleep 0.05; done ;;
    esac
}

results=$(mktemp)
servers=(keel haproxy)
cases="relay:64:50 relay:64:500 relay:16384:50 relay:16384:500"
for round in $(seq 1 "$repeats"); do
    for c in $cases; do
        IFS=: read -r _ size conns <<<"$c"
        for i in 0 1; do
            server=${servers[$(( (i + round) % 2 ))]}
            start_relay "$server"
            before=$(cpu_ticks "$SERVER_PID")
            json=$("${CLIENT_CPU[@]}" "$bench" relay --port "$SERVER_PORT" -c "$conns" -s "$size" -p 1 \
                --warmup 0 --duration "$seconds" --json 2>/dev/null || echo '{"count": 0, "rate": 0, "latency_p99_us": 0}')
            after=$(cpu_ticks "$SERVER_PID")
            stop_server
            count=$(field "$json" count) rate=$(field "$json" rate) p99=$(field "$json" latency_p99_us)
            cpu_ns=$(awk "BEGIN { if ($count > 0) printf \"%.0f\", ($after - $before) * 1e9 / $tick / $count; else print 0 }")
            echo "$c $server $rate $cpu_ns $p99 $round" >>"$results"
            echo "round $round $c $server: $rate/s, $cpu_ns ns relay CPU per message, p99 $p99 us" >&2
        done
    done
done

ratio() {  # case column(3 rate, 4 cpu, 5 p99)
    awk -v c="$1" -v k="$2" '$1==c && $2=="keel" {mine[$6]=$k} $1==c && $2=="haproxy" {ref[$6]=$k}
        END {for (r in mine) if (ref[r] > 0) printf "%.4f\n", mine[r] / ref[r]}' "$results" | median | awk '{printf "%.2f", $1}'
}
value() { awk -v c="$1" -v s="$2" -v k="$3" '$1==c && $2==s {print $k}' "$results" | median; }
echo
echo "TCP relay to one keel-echo back-end, one relay thread each, keel-bench relay client (depth 1); medians of $repeats runs of ${seconds}s."
echo "CPU = the relay's user+system time per echoed message (both directions relayed)."
echo
echo "| case (size:conns) | Keel msg/s | HAProxy msg/s | Keel CPU ns | HAProxy CPU ns | CPU Keel/HAProxy | Keel p99 µs | HAProxy p99 µs | p99 Keel/HAProxy |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $cases; do
    echo "| ${c#relay:} | $(value "$c" keel 3) | $(value "$c" haproxy 3) | $(value "$c" keel 4) | $(value "$c" haproxy 4)" \
         "| $(ratio "$c" 4) | $(value "$c" keel 5) | $(value "$c" haproxy 5) | $(ratio "$c" 5) |"
done
rm -f "$results"
