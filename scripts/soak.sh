#!/usr/bin/env bash
# Soak and fault injection: keel-echo and keel-udp-echo under a mixed keel-bench load for a given time,
# with network faults injected between the load and the servers, sampling each server's RSS, open
# descriptors and buffer-pool statistics once a second into CSV files and a PNG plot.
#
#   scripts/soak.sh [--duration SECONDS] [--out DIR] [--backend io_uring|epoll] [--loopback] [--bin DIR]
#
# The servers run in a network namespace of their own and the load in another, joined by a veth pair
# (10.77.0.1 <-> 10.77.0.2): nothing reaches the host's network. Every 15 s the fault profile changes:
#   clean -> loss (0.5% of TCP segments after the handshake and of datagrams, nftables)
#         -> rate (20 Mbit/s token bucket with up to 50 ms of queueing, tc tbf)
#         -> loss+rate -> clean ...
# (tc netem's random delay is not in this kernel; delay comes from the token bucket's queue.)
# --loopback runs everything on 127.0.0.1 without namespaces or faults (for machines without root).
# --bin takes keel-echo, keel-udp-echo and keel-bench from DIR instead of building them (a long soak from
# a copy keeps running while the tree is rebuilt).
#
# The load, all at once for the whole duration (every byte echoed is validated by keel-bench):
#   echo at 64 B (32 connections, 4 in flight) and 16 KiB (8 connections), 1,000 held idle connections,
#   UDP echo (4 sockets), misbehaving peers (slow readers, resets mid-write, garbage, half-closes), and
#   5-second connect storms every 15 s.
# keel-echo's buffer pools are capped low enough that the load reaches the cap (reads then wait for
# buffers; the summary counts the refused acquisitions).
# It passes only if every keel-bench run ends without validation failures or errors, no descriptor,
# buffer or connection is left once the load stops, and RSS shows no growth trend after warm-up
# (scripts/soak-report.py says which check failed). Results go to DIR (default .build/soak).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=120
out=.build/soak
backend=""
loopback=0
bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --backend) backend=$2; shift 2 ;;
        --loopback) loopback=1; shift ;;
        --bin) bin=$2; shift 2 ;;
        *) echo "usage: $0 [--duration SECONDS] [--out DIR] [--backend io_uring|epoll] [--loopback] [--bin DIR]" >&2; exit 2 ;;
    esac
done
if [ "$loopback" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "soak: network namespaces need root; run with --loopback for a run without fault injection" >&2
    exit 2
fi

echo "== soak: preparing (release build, plotting and nftables packages)"
if [ -z "$bin" ]; then
    for product in keel-echo keel-udp-echo keel-bench; do swift build -c release --product "$product" >/dev/null; done
    bin=$(swift build -c release --show-bin-path)
fi
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install --quiet matplotlib
if [ "$loopback" = 0 ] && ! command -v nft >/dev/null; then
    (apt-get install -y nftables >/dev/null 2>&1 || (apt-get update >/dev/null && apt-get install -y nftables >/dev/null))
fi

rm -rf "$out"
mkdir -p "$out"
server_ns=keel-soak-s-$$
client_ns=keel-soak-c-$$
pids=()       # servers and the fault schedule
load_pids=()  # keel-bench runs
cleanup() {
    for pid in "${pids[@]}" "${load_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}" "${load_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$loopback" = 0 ]; then
        ip netns del "$server_ns" 2>/dev/null || true
        ip netns del "$client_ns" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if [ "$loopback" = 0 ]; then
    server_host=10.77.0.1
    ip netns add "$server_ns"
    ip netns add "$client_ns"
    ip link add "ks$$s" netns "$server_ns" type veth peer name "ks$$c" netns "$client_ns"
    ip -n "$server_ns" addr add 10.77.0.1/30 dev "ks$$s"
    ip -n "$client_ns" addr add 10.77.0.2/30 dev "ks$$c"
    for ns in "$server_ns" "$client_ns"; do
        ip -n "$ns" link set lo up
        ip netns exec "$ns" nft add table inet keelsoak
        ip netns exec "$ns" nft add chain inet keelsoak out '{ type filter hook output priority 0; }'
    done
    ip -n "$server_ns" link set "ks$$s" up
    ip -n "$client_ns" link set "ks$$c" up
    # The load closes most connections first; let it reuse its TIME_WAIT ports.
    ip netns exec "$client_ns" sysctl -q -w net.ipv4.tcp_tw_reuse=1
    # `exec`: a background job's PID is then the program's own, so the script can signal it.
    in_server() { exec ip netns exec "$server_ns" "$@"; }
    in_client() { exec ip netns exec "$client_ns" "$@"; }
else
    server_host=127.0.0.1
    in_server() { exec "$@"; }
    in_client() { exec "$@"; }
fi

backend_flag=()
[ -n "$backend" ] && backend_flag=(--backend "$backend")

start_server() {  # NAME PORT [ARGS...] -> waits for its `listening on` line
    local name=$1 port=$2
    shift 2
    in_server "$bin/$name" --host "$server_host" --port "$port" --threads 2 "${backend_flag[@]}" \
        --stats-file "$out/$name.csv" "$@" >"$out/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do grep -q "listening on" "$out/$name.log" && return 0; sleep 0.1; done
    echo "soak: $name did not start" >&2
    cat "$out/$name.log" >&2
    exit 1
}
t0=$(date +%s.%N)  # the servers' CSV clocks start here (to within a few milliseconds)
elapsed() { python3 -c "import time; print(round(time.time() - $t0, 1))"; }
# Keepalive after 2 idle seconds: a peer whose reset was lost to the injected loss would otherwise leave
# a connection open for good (as it would on a real network). Each thread's buffer pool is capped at
# 10 MiB (8 of them lent to the kernel for receives), so the load reaches the cap: reads wait for buffers.
start_server keel-echo 7007 --keep-alive 2 --buffer-pool-mib 10
start_server keel-udp-echo 7008
echo "== soak: servers up on $server_host ($(grep -o 'keel backend: [a-z_]*' "$out/keel-echo.log" || echo "backend in log"))"
sleep 3  # baseline samples before any load

set_faults() {  # PROFILE: clean | loss | rate | loss+rate
    [ "$loopback" = 1 ] && return 0
    for pair in "$server_ns ks$$s" "$client_ns ks$$c"; do
        set -- $pair
        ip netns exec "$1" nft flush chain inet keelsoak out
        ip netns exec "$1" tc qdisc del dev "$2" root 2>/dev/null || true
        case "$profile" in *loss*)
            ip netns exec "$1" nft add rule inet keelsoak out 'tcp flags ! syn numgen random mod 1000 < 5 drop'
            ip netns exec "$1" nft add rule inet keelsoak out 'meta l4proto udp numgen random mod 1000 < 5 drop' ;;
        esac
        case "$profile" in *rate*)
            ip netns exec "$1" tc qdisc add dev "$2" root tbf rate 20mbit burst 32kb latency 50ms ;;
        esac
    done
}

load_start=$(elapsed)
echo "seconds,profile" >"$out/faults.csv"
(
    profiles=(clean loss rate loss+rate)
    index=0
    while :; do
        profile=${profiles[$((index % 4))]}
        set_faults
        echo "$(elapsed),$profile" >>"$out/faults.csv"
        index=$((index + 1))
        sleep 15
    done
) &
faults_pid=$!
pids+=($faults_pid)

echo "== soak: ${duration} s of mixed load"
bench() {  # NAME ARGS... (run it in a subshell or the background: it execs keel-bench in the client namespace)
    local name=$1
    shift
    in_client "$bin/keel-bench" "$@" --host "$server_host" --json "${backend_flag[@]}" >"$out/$name.json" 2>"$out/$name.err"
}
bench echo-64 echo --port 7007 --connections 32 --size 64 --depth 4 --warmup 0 --duration "$duration" & load_pids+=($!)
bench echo-16k echo --port 7007 --connections 8 --size 16384 --depth 2 --warmup 0 --duration "$duration" & load_pids+=($!)
bench hold hold --port 7007 --count 1000 --duration "$duration" & load_pids+=($!)
bench udp udp --port 7008 --sockets 4 --window 16 --warmup 0 --duration "$duration" & load_pids+=($!)
bench misbehave misbehave --port 7007 --concurrency 16 --warmup 0 --duration "$duration" & load_pids+=($!)
(
    round=0
    end=$(( $(date +%s) + duration - 5 ))
    while [ "$(date +%s)" -lt "$end" ]; do
        (bench "storm-$round" storm --port 7007 --concurrency 16 --warmup 0 --duration 5) || exit 1
        round=$((round + 1))
        sleep 10
    done
) & load_pids+=($!)

failed=0
for pid in "${load_pids[@]}"; do wait "$pid" || failed=1; done
load_end=$(elapsed)
kill -TERM "$faults_pid" 2>/dev/null || true
wait "$faults_pid" 2>/dev/null || true
profile=clean
set_faults
echo "$load_end,end" >>"$out/faults.csv"
echo "== soak: load finished at ${load_end} s; settling"
sleep 10  # closes finish (keepalive finds peers whose resets were lost), the pool drains, the last samples land

for name in keel-echo keel-udp-echo; do
    pid=${pids[0]}
    pids=("${pids[@]:1}")
    kill -TERM "$pid"
    wait "$pid" || { echo "soak: $name exited with an error" >&2; failed=1; }
done

python3 scripts/soak-report.py "$out" --load-start "$load_start" --load-end "$load_end" --bench-failed "$failed" || failed=1
exit "$failed"
