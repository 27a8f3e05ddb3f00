#!/usr/bin/env bash
# Side-by-side UDP echo benchmark: keel-udp-echo (coalesced sends: UDP GSO runs and sendmmsg), the
# same with 68 KiB buffers (keel-gro: runs also received whole, UDP GRO, and echoed whole), the same
# with --no-coalescing (one system call per datagram: Keel before segmentation offload) and
# SwiftNIO's UDP echo server, each on one thread pinned to the last CPU, driven by keel-bench udp
# pinned to the first, interleaved and repeated. Reports medians of datagrams/s, server CPU per
# datagram (from /proc/PID/stat), datagrams per server CPU-second and per-round ratios.
#
#   Benchmarks/compare-udp.sh [--repeats N] [--seconds S] [--cases "SIZE:SOCKETS:WINDOW ..."]
#
# KEEL_UDP_BEFORE=PATH adds a keel-udp-echo binary built from an older commit as "keel-before".
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/servers.sh
cases="64:8:1 64:8:16 1200:8:16"
parse_compare_options "$@"
echo "building release binaries..." >&2
swift build -c release --product keel-udp-echo >/dev/null
swift build -c release --product keel-bench >/dev/null
swift build -c release --package-path Benchmarks --product nio-udp-echo-server >/dev/null
bench=.build/release/keel-bench
tick=$(getconf CLK_TCK)
servers="keel keel-gro nio keel-plain"
[ -n "${KEEL_UDP_BEFORE:-}" ] && servers="$servers keel-before"

start_udp_server() {
    case "$1" in
        keel) launch_server .build/release/keel-udp-echo --port 0 --threads 1 --backend io_uring ;;
        keel-gro) launch_server .build/release/keel-udp-echo --port 0 --threads 1 --backend io_uring --buffer-kib 68 ;;
        keel-plain) launch_server .build/release/keel-udp-echo --port 0 --threads 1 --backend io_uring --no-coalescing ;;
        keel-before) launch_server "$KEEL_UDP_BEFORE" --port 0 --threads 1 --backend io_uring ;;
        nio) launch_server Benchmarks/.build/release/nio-udp-echo-server 0 ;;
    esac
}

results=$(mktemp)
for round in $(seq 1 "$repeats"); do
    for c in $cases; do
        IFS=: read -r size sockets window <<<"$c"
        read -r -a order <<<"$servers"
        for i in "${!order[@]}"; do
            server=${order[$(( (i + round - 1) % ${#order[@]} ))]}
            start_udp_server "$server"
            before=$(cpu_ticks "$SERVER_PID")
            json=$("${CLIENT_CPU[@]}" "$bench" udp --port "$SERVER_PORT" --sockets "$sockets" --window "$window" --size "$size" \
                   --threads 1 --warmup 0 --duration "$seconds" --json 2>/dev/null || echo '{"count": 0, "rate": 0, "lost": 0}')
            after=$(cpu_ticks "$SERVER_PID")
            stop_server
            count=$(echo "$json" | sed 's/.*"count": \([0-9]*\).*/\1/')
            rate=$(echo "$json" | sed 's/.*"rate": \([0-9.]*\).*/\1/')
            lost=$(echo "$json" | sed -n 's/.*"lost": \([0-9]*\).*/\1/p')
            cpu_ns=$(awk "BEGIN { if ($count > 0) printf \"%.0f\", ($after - $before) * 1e9 / $tick / $count; else print 0 }")
            per_cpu_s=$(awk "BEGIN { if ($cpu_ns > 0) printf \"%.0f\", 1e9 / $cpu_ns; else print 0 }")
            echo "$c $server $rate $cpu_ns $per_cpu_s ${lost:-0} $round" >>"$results"
            echo "round $round $c $server: $rate datagrams/s, $cpu_ns ns CPU/datagram, $per_cpu_s per CPU-s, lost ${lost:-0}" >&2
        done
    done
done

ratio() { round_ratio "$results" "$1" "$2" "$3" 5 7; }  # case server reference: datagrams per CPU-s
echo
echo "UDP echo, one server thread, keel-bench udp client (SOCKETS sockets, WINDOW datagrams in flight each); medians of $repeats runs of ${seconds}s. CPU = server user+system time per echoed datagram; ratios are of datagrams per server CPU-second, medians of the per-round ratios."
echo
echo "| size | sockets | window | server | datagrams/s | CPU ns/datagram | datagrams per CPU-s | vs NIO | vs keel-plain |"
echo "|---:|---:|---:|---|---:|---:|---:|---:|---:|"
for c in $cases; do
    IFS=: read -r size sockets window <<<"$c"
    for server in $servers; do
        rate=$(round_value "$results" "$c" "$server" 3)
        cpu=$(round_value "$results" "$c" "$server" 4)
        per=$(round_value "$results" "$c" "$server" 5)
        echo "| $size | $sockets | $window | $server | ${rate%.*} | $cpu | $per | $(ratio "$c" "$server" nio) | $(ratio "$c" "$server" keel-plain) |"
    done
done
echo
echo "datagrams lost (all runs): $(awk '{l += $6} END {print l + 0}' "$results")"
rm -f "$results"
