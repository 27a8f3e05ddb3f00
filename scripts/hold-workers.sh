#!/usr/bin/env bash
# keel-server --workers N holding idle connections: N worker processes share one listener (SO_REUSEPORT),
# so together they hold more connections than one process may have descriptors (20,000 here). Clients
# are keel-bench hold processes, each under the same per-process limit, spread over 127.0.0.x sources.
# Reports the connections reached (from the supervisor's /status.json, summed over workers), the time to
# reach them and each worker's RSS; then what a reload (SIGHUP, same file) and a killed worker (SIGKILL)
# did to the open connections.
#
#   scripts/hold-workers.sh [connections=60000] [workers=4] [clients=4]
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-60000}
workers=${2:-4}
clients=${3:-4}
for product in keel-server keel-bench; do swift build -c release --product "$product" >/dev/null; done
bin=.build/release
config=$(mktemp --suffix .yaml)
out=$(mktemp)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "${server:-}" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    rm -f "$config" "$out"
}
trap cleanup EXIT
cat >"$config" <<YAML
shutdown-deadline: 5s
endpoints:
  - { name: echo, listen: 127.0.0.1:0, plugin: echo, limits: { max-connections: 100000 } }
admin: { listen: 127.0.0.1:0 }
YAML
"$bin/keel-server" --config "$config" --workers "$workers" --threads 1 --log-level warning >"$out" 2>&1 &
server=$!
for _ in $(seq 1 300); do grep -q "(admin)" "$out" && break; sleep 0.1; done
port=$(grep "(echo)" "$out" | sed 's/listening on [^:]*:\([0-9]*\) .*/\1/')
admin=$(grep "(admin)" "$out" | sed 's/listening on [^:]*:\([0-9]*\) .*/\1/')
open_now() { curl -s -m 5 "http://127.0.0.1:$admin/status.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["endpoints"][0]["open"])'; }
per_client=$(( total / clients ))
start=$(date +%s.%N)
for _ in $(seq 1 "$clients"); do
    "$bin/keel-bench" hold --port "$port" --count "$per_client" --warmup 0 --duration 60 --json >/dev/null 2>&1 &
    pids+=($!)
done
reached=0
for _ in $(seq 1 600); do
    reached=$(open_now)
    [ "$reached" -ge "$total" ] && break
    sleep 0.1
done
elapsed=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
echo "keel-server --workers $workers: $reached of $total idle connections open after ${elapsed} s (from the supervisor's /status.json)"
for child in $(cat "/proc/$server/task/$server/children"); do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$child/status")
    fds=$(ls "/proc/$child/fd" | wc -l)
    echo "  worker pid $child: RSS $((rss / 1024)) MiB, $fds descriptors, $(( rss * 1024 / (fds > 0 ? fds : 1) )) bytes of RSS per descriptor"
done
curl -s -m 5 "http://127.0.0.1:$admin/metrics" | grep '^keel_connections_open'
[ "$reached" -ge "$total" ] || exit 1

kill -HUP "$server"
sleep 2
after_reload=$(open_now)
echo "reload (SIGHUP, same file): $reached open before, $after_reload after ($(( reached - after_reload )) dropped)"

victim=$(cut -d' ' -f1 "/proc/$server/task/$server/children")
victim_fds=$(ls "/proc/$victim/fd" | wc -l)
kill -9 "$victim"
sleep 2
after_kill=$(open_now)
echo "killed worker pid $victim (it held $victim_fds descriptors): $after_reload open before, $after_kill after ($(( after_reload - after_kill )) dropped: that worker's own connections); $(grep -c "exited (signal 9); restarting" "$out") restart logged"

