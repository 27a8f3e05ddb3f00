#!/usr/bin/env bash
# TLS side by side: keel-tls-echo (io_uring, one thread) against a SwiftNIO + NIOSSL echo server (one
# thread), same certificate (EC P-256, from scripts/make-test-pki.sh), same keel-bench client over TLS 1.3,
# interleaved and repeated. Reports medians of server CPU per message (from /proc/PID/stat) and per
# handshake, messages and handshakes per second, and the ratios Keel / NIO.
#
#   Benchmarks/compare-tls.sh [--repeats N] [--seconds S]
#
# Echo cases: 64 B and 16 KiB messages, 50 connections, depth 1 and 16. Handshakes: `keel-bench storm`
# (connect, one 64-byte echo, close) with TLS 1.3 full handshakes and with TLS 1.2 resumed sessions.
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/servers.sh
parse_compare_options "$@"
echo "building release binaries..." >&2
swift build -c release --product keel-tls-echo >/dev/null
swift build -c release --product keel-bench >/dev/null
swift build -c release --package-path Benchmarks --product nio-echo-server >/dev/null
pki=$(mktemp -d)
scripts/make-test-pki.sh "$pki"
bench=.build/release/keel-bench
tick=$(getconf CLK_TCK)
tls=(--tls --ca "$pki/ca.pem" --server-name localhost)

start_tls_server() {  # name -> SERVER_PID, SERVER_PORT
    case "$1" in
        keel) launch_server .build/release/keel-tls-echo --port 0 --threads 1 --backend io_uring \
                --cert "$pki/server.pem" --key "$pki/server.key" ;;
        nio) launch_server Benchmarks/.build/release/nio-echo-server 0 1 "$pki/server.pem" "$pki/server.key" ;;
    esac
}

results=$(mktemp)
cases="echo:64:50:1 echo:64:50:16 echo:16384:50:1 echo:16384:50:16 storm-tls13-full storm-tls12-resumed"
for round in $(seq 1 "$repeats"); do
    for c in $cases; do
        for i in 0 1; do
            servers=(keel nio)
            server=${servers[$(( (i + round) % 2 ))]}
            start_tls_server "$server"
            before=$(cpu_ticks "$SERVER_PID")
            case "$c" in
                echo:*)
                    IFS=: read -r _ size conns depth <<<"$c"
                    json=$("${CLIENT_CPU[@]}" "$bench" echo --port "$SERVER_PORT" -c "$conns" -s "$size" -p "$depth" \
                        --warmup 0 --duration "$seconds" --json "${tls[@]}" 2>/dev/null || echo '{"count": 0, "rate": 0}') ;;
                storm-tls13-full)
                    json=$("${CLIENT_CPU[@]}" "$bench" storm --port "$SERVER_PORT" --concurrency 16 --warmup 0 --duration "$seconds" \
                        --json "${tls[@]}" --no-resume 2>/dev/null || echo '{"count": 0, "rate": 0}') ;;
                storm-tls12-resumed)
                    json=$("${CLIENT_CPU[@]}" "$bench" storm --port "$SERVER_PORT" --concurrency 16 --warmup 0 --duration "$seconds" \
                        --json "${tls[@]}" --tls-version 1.2 2>/dev/null || echo '{"count": 0, "rate": 0}') ;;
            esac
            after=$(cpu_ticks "$SERVER_PID")
            stop_server
            count=$(field "$json" count) rate=$(field "$json" rate)
            # No warm-up: the server's CPU over the whole run is divided by every operation of the run
            # (the echo cases' first handshakes included, alike for both servers).
            cpu_ns=$(awk "BEGIN { if ($count > 0) printf \"%.0f\", ($after - $before) * 1e9 / $tick / $count; else print 0 }")
            echo "$c $server $rate $cpu_ns $round" >>"$results"
            echo "round $round $c $server: $rate/s, $cpu_ns ns server CPU per operation" >&2
        done
    done
done
rm -rf "$pki"

ratio() {  # case column(3 rate, 4 cpu)
    awk -v c="$1" -v k="$2" '$1==c && $2=="keel" {mine[$5]=$k} $1==c && $2=="nio" {ref[$5]=$k}
        END {for (r in mine) if (ref[r] > 0) printf "%.4f\n", mine[r] / ref[r]}' "$results" | median | awk '{printf "%.2f", $1}'
}
value() { awk -v c="$1" -v s="$2" -v k="$3" '$1==c && $2==s {print $k}' "$results" | median; }
echo
echo "TLS 1.3 echo and handshakes, one server thread each, keel-bench client; medians of $repeats runs of ${seconds}s."
echo "CPU = server user+system time per message (echo) or per connection (storm: handshake, one echo, close)."
echo
echo "| case | Keel ops/s | NIOSSL ops/s | Keel CPU ns/op | NIOSSL CPU ns/op | CPU Keel/NIO | rate Keel/NIO |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for c in $cases; do
    echo "| $c | $(value "$c" keel 3) | $(value "$c" nio 3) | $(value "$c" keel 4) | $(value "$c" nio 4) | $(ratio "$c" 4) | $(ratio "$c" 3) |"
done
