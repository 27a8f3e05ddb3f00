#!/usr/bin/env bash
# The Autobahn|Testsuite WebSocket cases, run by kosoku 0.1.0 (from PyPI, in a virtual environment under
# .build/) against keel-ws-echo (release build) on 127.0.0.1. Prints one summary line and exits nonzero
# when any case did not pass; the reports go to .build/autobahn/.
#
#   scripts/autobahn.sh                 cases 1-7, 9 and 10 (without compression)
#   scripts/autobahn.sh -i 'CASE' ...   other cases (kosoku's -i/-x options, passed through)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.build/autobahn-venv
if [ ! -x "$venv/bin/kosoku" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet kosoku==0.1.0
fi
swift build -c release --product keel-ws-echo >/dev/null
bin=$(swift build -c release --show-bin-path)

cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(-i '1.*' -i '2.*' -i '3.*' -i '4.*' -i '5.*' -i '6.*' -i '7.*' -i '9.*' -i '10.*')
reports=.build/autobahn
rm -rf "$reports"
mkdir -p "$reports"
log=$(mktemp)
"$bin/keel-ws-echo" --port 0 --threads 1 >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
port=$(grep -o "listening on .*" "$log" | sed 's/.*://')

status=0
timeout 1200 "$venv/bin/kosoku" "127.0.0.1:$port" "${cases[@]}" -p 4 -o "$reports" >"$reports/kosoku.log" 2>&1 || status=$?
python3 - "$reports" "$status" <<'PY'
import collections, json, os, sys
reports, status = sys.argv[1], int(sys.argv[2])
index = os.path.join(reports, "index.json")
if not os.path.exists(index):
    print(f"autobahn: no report (kosoku exited {status}); see {reports}/kosoku.log")
    sys.exit(1)
behaviors = collections.Counter()
failed = []
for agent, cases in json.load(open(index)).items():
    for case, result in cases.items():
        behaviors[result["behavior"]] += 1
        if result["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL") or result["behaviorClose"] not in ("OK", "INFORMATIONAL"):
            failed.append(f"{case} ({result['behavior']}/{result['behaviorClose']})")
summary = ", ".join(f"{count} {name}" for name, count in sorted(behaviors.items()))
print(f"autobahn: {sum(behaviors.values())} cases against keel-ws-echo: {summary}; failed: {len(failed)}")
for case in sorted(failed):
    print("  FAILED", case)
sys.exit(1 if failed or status not in (0,) else 0)
PY
