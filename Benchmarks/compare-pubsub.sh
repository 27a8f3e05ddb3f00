#!/usr/bin/env bash
# Pub/sub servers side by side: keel-pubsub (io_uring, one I/O thread) against Redis PUBLISH/SUBSCRIBE
# (single-threaded; Debian's redis-server, installed when missing), the same keel-bench pubsub client
# (one publisher at a fixed rate, S subscribers on one topic, every delivery checked for loss, repeats
# and order), interleaved and repeated. The client reads each server's CPU time over the measured
# window only (not the subscribers' connecting). Reports medians of deliveries per server CPU-second,
# publish-to-delivery p99, and the per-round ratios Keel / Redis.
#
#   Benchmarks/compare-pubsub.sh [--repeats N] [--seconds S]
#   WINDOW_MS=2 Benchmarks/compare-pubsub.sh ...   the coalescing window of the "Keel, window" runs
#   WINDOW_MS="20 20 100" ...                       one window per case (100, 1,000, 10,000 subscribers)
#
# Each round also runs keel-pubsub with --coalescing-delay-ms WINDOW_MS (default 2): deliveries to a
# subscriber leave together once per window instead of once per loop iteration, a latency trade.
#
# Cases: 100, 1,000 and 10,000 subscribers at 500,000 deliveries per second (rate x subscribers), 64-byte
# payloads; then 1,000,000 deliveries per second asked with every core (keel-pubsub on one I/O thread
# per core; Redis has one), neither pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/servers.sh
parse_compare_options "$@"
command -v redis-server >/dev/null || { echo "installing redis-server..." >&2; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null; }
echo "building release binaries..." >&2
for product in keel-pubsub keel-bench; do swift build -c release --product "$product" >/dev/null; done
bench=.build/release/keel-bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

read -r -a windows <<<"${WINDOW_MS:-2}"
window_for() {  # case index -> its window (the list's last value for cases past its end)
    local i=$1; [ "$i" -lt "${#windows[@]}" ] || i=$((${#windows[@]} - 1)); echo "${windows[$i]}"
}
window_ms=${windows[0]}
start_pubsub() {  # name [threads] -> SERVER_PID, SERVER_PORT
    case "$1" in
        keel) launch_server .build/release/keel-pubsub --port 0 --threads "${2:-1}" --backend io_uring ;;
        keel-window) launch_server .build/release/keel-pubsub --port 0 --threads 1 --backend io_uring --coalescing-delay-ms "$window_ms" ;;
        keel-all) # every core, not pinned
            local saved=("${SERVER_CPU[@]}"); SERVER_CPU=()
            launch_server .build/release/keel-pubsub --port 0 --threads "$(nproc)" --backend io_uring
            SERVER_CPU=("${saved[@]}") ;;
        redis|redis-all)
            SERVER_PORT=$(free_port)
            local pin=("${SERVER_CPU[@]}"); [ "$1" = redis-all ] && pin=()
            "${pin[@]}" redis-server --port "$SERVER_PORT" --bind 127.0.0.1 --save '' --appendonly no --protected-mode no \
                --maxclients 10100 --loglevel warning >/dev/null 2>&1 &
            SERVER_PID=$!
            for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$SERVER_PORT") 2>/dev/null && break; sleep 0.05; done ;;
    esac
}
extra() { echo "$1" | sed -n "s/.*\"$2\": \"\([0-9.]*\)\".*/\1/p"; }

results=$(mktemp)
cases="pubsub:100:5000 pubsub:1000:500 pubsub:10000:50"
for round in $(seq 1 "$repeats"); do
    index=0
    for c in $cases; do
        IFS=: read -r _ subs rate <<<"$c"
        window_ms=$(window_for "$index"); index=$((index + 1))
        rotation=(keel keel-window redis)
        for i in 0 1 2; do
            server=${rotation[$(( (i + round) % 3 ))]}
            protocol=keel; [ "$server" = redis ] && protocol=redis
            start_pubsub "$server"
            json=$("${CLIENT_CPU[@]}" "$bench" pubsub --port "$SERVER_PORT" --subscribers "$subs" --rate "$rate" -s 64 \
                --protocol "$protocol" --server-pid "$SERVER_PID" --warmup 1 --duration "$seconds" --json 2>/dev/null) || true
            [ -n "$json" ] || json='{"count": 0, "rate": 0, "lost": 0, "latency_p99_us": 0}'
            stop_server
            per_cpu=$(extra "$json" deliveries_per_server_cpu_s) rate_out=$(field "$json" rate)
            p99=$(field "$json" latency_p99_us) lost=$(field "$json" lost)
            echo "$c $server ${per_cpu:-0} $rate_out $p99 $lost $round" >>"$results"
            echo "round $round $c $server: ${per_cpu:-0} deliveries per server CPU-second, $rate_out/s, p99 $p99 us, lost $lost" >&2
        done
    done
done
# With every core: 1,000 subscribers at 1,000 messages/s (1,000,000 deliveries/s asked), neither pinned.
for round in $(seq 1 "$repeats"); do
    for server in keel-all redis-all; do
        start_pubsub "$server"
        json=$("$bench" pubsub --port "$SERVER_PORT" --subscribers 1000 --rate 1000 -s 64 --threads "$(nproc)" \
            --protocol "${server%-all}" --server-pid "$SERVER_PID" --warmup 1 --duration "$seconds" --json 2>/dev/null) || true
        [ -n "$json" ] || json='{"count": 0, "rate": 0, "lost": 0, "latency_p99_us": 0}'
        stop_server
        per_cpu=$(extra "$json" deliveries_per_server_cpu_s) rate_out=$(field "$json" rate)
        echo "max:1000 $server ${per_cpu:-0} $rate_out 0 $(field "$json" lost) $round" >>"$results"
        echo "round $round max:1000 $server: $rate_out deliveries/s, ${per_cpu:-0} per server CPU-second" >&2
    done
done

ratio() {  # case column(3 per-cpu, 4 rate, 5 p99) keel-name redis-name
    awk -v c="$1" -v k="$2" -v a="$3" -v b="$4" '$1==c && $2==a {mine[$7]=$k} $1==c && $2==b {ref[$7]=$k}
        END {for (r in mine) if (ref[r] > 0) printf "%.4f\n", mine[r] / ref[r]}' "$results" | median | awk '{printf "%.2f", $1}'
}
value() { awk -v c="$1" -v s="$2" -v k="$3" '$1==c && $2==s {print $k}' "$results" | median; }
total_lost() { awk '{s += $6} END {print s + 0}' "$results"; }
echo
echo "Pub/sub fan-out, 1 publisher, 64-byte payloads, keel-bench pubsub client; medians of $repeats runs of ${seconds}s."
echo "Per CPU-second = deliveries in the measured window / the server's user+system time in it (one server thread each)."
echo
echo "| subscribers:rate | Keel deliveries/CPU-s | Redis deliveries/CPU-s | Keel/Redis | Keel p99 µs | Redis p99 µs | deliveries/s (both) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for c in $cases; do
    echo "| ${c#pubsub:} | $(value "$c" keel 3) | $(value "$c" redis 3) | $(ratio "$c" 3 keel redis) | $(value "$c" keel 5)" \
         "| $(value "$c" redis 5) | $(value "$c" keel 4) / $(value "$c" redis 4) |"
done
echo
echo "keel-pubsub with --coalescing-delay-ms (each subscriber's deliveries sent together once per window):"
echo
echo "| subscribers:rate | window ms | Keel, window: deliveries/CPU-s | Keel, window / Redis | Keel, window p99 µs | Redis p99 µs | deliveries/s |"
echo "|---|---:|---:|---:|---:|---:|---:|"
index=0
for c in $cases; do
    echo "| ${c#pubsub:} | $(window_for "$index") | $(value "$c" keel-window 3) | $(ratio "$c" 3 keel-window redis) | $(value "$c" keel-window 5)" \
         "| $(value "$c" redis 5) | $(value "$c" keel-window 4) |"
    index=$((index + 1))
done
echo
echo "1,000 subscribers at 1,000 messages/s, keel-pubsub on $(nproc) I/O threads and Redis (one thread), neither pinned; client on $(nproc) threads:"
echo "Keel $(value max:1000 keel-all 4) deliveries/s ($(value max:1000 keel-all 3) per CPU-s), Redis $(value max:1000 redis-all 4) deliveries/s ($(value max:1000 redis-all 3) per CPU-s); rate Keel/Redis $(ratio max:1000 4 keel-all redis-all)."
echo "Messages lost in all runs: $(total_lost)"
rm -f "$results"
