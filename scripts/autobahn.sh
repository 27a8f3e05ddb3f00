#!/usr/bin/env bash
# The Autobahn|Testsuite WebSocket cases, run by kosoku 0.1.0 (from PyPI, in a virtual environment under
# .build/) against keel-ws-echo (release build) on 127.0.0.1: cases 1-7, 9 and 10 with compression off
# (--no-deflate), then cases 12 and 13 (permessage-deflate) with it on. Prints a summary line per pass
# and exits nonzero when any case did not pass; the reports go to .build/autobahn/.
#
#   scripts/autobahn.sh                               both passes
#   scripts/autobahn.sh [--no-deflate] -i CASE ...    one pass over chosen cases (kosoku's -i/-x)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.build/autobahn-venv
if [ ! -x "$venv/bin/kosoku" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet kosoku==0.1.0
fi
swift build -c release --product keel-ws-echo >/dev/null
bin=$(swift build -c release --show-bin-path)
rm -rf .build/autobahn
mkdir -p .build/autobahn

# run NAME SERVER-FLAGS -- KOSOKU-CASES...: one pass against a fresh keel-ws-echo.
run() {
    local name=$1 flags=() reports=.build/autobahn/$1 log pid status=0
    shift
    while [ "$1" != "--" ]; do flags+=("$1"); shift; done
    shift
    mkdir -p "$reports"
    log=$(mktemp)
    "$bin/keel-ws-echo" --port 0 --threads 1 "${flags[@]}" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
    local port
    port=$(grep -o "listening on .*" "$log" | sed 's/.*://')
    timeout 1200 "$venv/bin/kosoku" "127.0.0.1:$port" "$@" -p 4 -o "$reports" >"$reports/kosoku.log" 2>&1 || status=$?
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
    python3 - "$reports" "$status" "$name" <<'PY'
import collections, json, os, sys
reports, status, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
index = os.path.join(reports, "index.json")
if not os.path.exists(index):
    print(f"autobahn ({name}): no report (kosoku exited {status}); see {reports}/kosoku.log")
    sys.exit(1)
behaviors = collections.Counter()
failed = []
for agent, cases in json.load(open(index)).items():
    for case, result in cases.items():
        behaviors[result["behavior"]] += 1
        if result["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL") or result["behaviorClose"] not in ("OK", "INFORMATIONAL"):
            failed.append(f"{case} ({result['behavior']}/{result['behaviorClose']})")
summary = ", ".join(f"{count} {behavior}" for behavior, count in sorted(behaviors.items()))
print(f"autobahn ({name}): {sum(behaviors.values())} cases against keel-ws-echo: {summary}; failed: {len(failed)}")
for case in sorted(failed):
    print("  FAILED", case)
sys.exit(1 if failed or status != 0 else 0)
PY
}

if [ $# -gt 0 ]; then
    flags=()
    [ "$1" = --no-deflate ] && { flags=(--no-deflate); shift; }
    run chosen "${flags[@]}" -- "$@"
    exit
fi
failed=0
run plain --no-deflate -- -i '1.*' -i '2.*' -i '3.*' -i '4.*' -i '5.*' -i '6.*' -i '7.*' -i '9.*' -i '10.*' || failed=1
run deflate -- -i '12.*' -i '13.*' || failed=1
exit $failed
