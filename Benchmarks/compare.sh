#!/usr/bin/env bash
# Side-by-side echo benchmark: keel-echo (io_uring and epoll), SwiftNIO's echo server and a minimal C
# io_uring echo server, each with one server thread, driven by the same keel-bench settings,
# interleaved and repeated. Reports medians of msgs/s, server CPU per message (from /proc/PID/stat),
# ratios against SwiftNIO and C, and server RSS.
#
#   Benchmarks/compare.sh [--quick] [--repeats N] [--seconds S] [--servers "NAMES"] [--cases "SIZE:CONNS:DEPTH ..."]
#
# --quick runs 64-byte messages at 50 and 500 connections, depth 1 and 16 (the targets' cases);
# the full matrix adds 4 KiB messages and 1 connection. A case "storm:N:1" is a connect storm (N
# connections in progress, each one 64-byte echo, then close): its "msgs" are connections.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=3 seconds=5 quick=0 servers="keel-io_uring keel-epoll nio c-io_uring" cases=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --repeats) repeats=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        --servers) servers=$2; shift ;;
        --cases) cases=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

source Benchmarks/servers.sh
echo "building release binaries..." >&2
build_servers
bench=.build/release/keel-bench
tick=$(getconf CLK_TCK)


user_ticks() { awk '{print $14}' "/proc/$1/stat"; }

if [ -n "$cases" ]; then :; elif [ "$quick" = 1 ]; then cases="64:50:1 64:50:16 64:500:1 64:500:16"; else
    cases="64:1:1 64:1:16 64:50:1 64:50:16 64:500:1 64:500:16 4096:1:1 4096:1:16 4096:50:1 4096:50:16 4096:500:1 4096:500:16"; fi

results=$(mktemp)
for round in $(seq 1 "$repeats"); do
    for c in $cases; do
        IFS=: read -r size conns depth <<<"$c"
        # Each round starts with a different server, so a drift within a round favours none of them.
        read -r -a order <<<"$servers"
        for i in "${!order[@]}"; do
            server=${order[$(( (i + round - 1) % ${#order[@]} ))]}
            start_server "$server"
            before=$(cpu_ticks "$SERVER_PID") user_before=$(user_ticks "$SERVER_PID")
            if [ "$size" = storm ]; then
                # A connect storm: CONNS connections in progress at once, each one 64-byte echo then close.
                json=$("${CLIENT_CPU[@]}" "$bench" storm --port "$SERVER_PORT" --concurrency "$conns" --size 64 \
                       --warmup 0 --duration "$seconds" --json 2>/dev/null || echo '{"count": 0, "rate": 0, "errors": 1}')
            else
                json=$("${CLIENT_CPU[@]}" "$bench" echo --port "$SERVER_PORT" --connections "$conns" --size "$size" --depth "$depth" \
                       --warmup 0 --duration "$seconds" --json 2>/dev/null || echo '{"count": 0, "rate": 0, "errors": 1}')
            fi
            after=$(cpu_ticks "$SERVER_PID") user_after=$(user_ticks "$SERVER_PID")
            rss=$(rss_kb "$SERVER_PID")
            stop_server
            count=$(echo "$json" | sed 's/.*"count": \([0-9]*\).*/\1/')
            rate=$(echo "$json" | sed 's/.*"rate": \([0-9.]*\).*/\1/')
            errors=$(echo "$json" | sed 's/.*"errors": \([0-9]*\).*/\1/')
            failures=$(echo "$json" | sed 's/.*"validation_failures": \([0-9]*\).*/\1/')
            cpu_ns=$(awk "BEGIN { if ($count > 0) printf \"%.0f\", ($after - $before) * 1e9 / $tick / $count; else print 0 }")
            user_ns=$(awk "BEGIN { if ($count > 0) printf \"%.0f\", ($user_after - $user_before) * 1e9 / $tick / $count; else print 0 }")
            echo "$c $server $rate $cpu_ns $rss $errors $failures $user_ns $round" >>"$results"
            echo "round $round $c $server: $rate msg/s, $cpu_ns ns CPU/msg ($user_ns user), RSS ${rss} kB, errors $errors/$failures" >&2
        done
    done
done

# Median over rounds of server/reference CPU per message within the same round: the machine's speed
# drifts between rounds (other tenants), and neighbouring runs share the drift.
ratio() { round_ratio "$results" "$1" "$2" "$3" 4 9; }  # case server reference: CPU per message
echo
echo "Echo, one server thread, keel-bench client; medians of $repeats runs of ${seconds}s. CPU = server user+system time per message; user = its user-space part; ratios are medians of the per-round ratios."
echo
echo "| size | conns | depth | server | msgs/s | CPU ns/msg | user ns/msg | CPU vs NIO | CPU vs C | RSS MB |"
echo "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
for c in $cases; do
    IFS=: read -r size conns depth <<<"$c"
    for server in $servers; do
        rate=$(round_value "$results" "$c" "$server" 3)
        cpu=$(round_value "$results" "$c" "$server" 4)
        rss=$(round_value "$results" "$c" "$server" 5)
        user=$(round_value "$results" "$c" "$server" 8)
        vs_nio=$(ratio "$c" "$server" nio)
        vs_c=$(ratio "$c" "$server" c-io_uring)
        echo "| $size | $conns | $depth | $server | ${rate%.*} | $cpu | $user | $vs_nio | $vs_c | $(awk "BEGIN {printf \"%.1f\", $rss / 1024}") |"
    done
done
errors=$(awk '{e += $6 + $7} END {print e + 0}' "$results")
echo
echo "errors and validation failures across all runs: $errors"
rm -f "$results"
