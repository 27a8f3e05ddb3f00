#!/usr/bin/env bash
# The TLS gate: sslyze 6.3.1 (from PyPI, in a virtual environment under .build/) scans keel-tls-echo on
# a test certificate and must find it compliant with Mozilla's "intermediate" configuration.
#
#   scripts/tls-gate.sh        (uses the release build of keel-tls-echo)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.build/sslyze-venv
if [ ! -x "$venv/bin/sslyze" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet sslyze==6.3.1
fi
swift build -c release --product keel-tls-echo >/dev/null
bin=$(swift build -c release --show-bin-path)

pki=$(mktemp -d)
log=$(mktemp)
scripts/make-test-pki.sh "$pki"
"$bin/keel-tls-echo" --cert "$pki/server.pem" --key "$pki/server.key" --port 0 >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$pki" "$log"' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
port=$(grep -o "listening on .*" "$log" | sed 's/.*://')
# The certificate is for localhost, issued by the test CA (the only trust root sslyze is given).
"$venv/bin/sslyze" --mozilla_config=intermediate --certinfo_ca_file "$pki/ca.pem" "localhost:$port{127.0.0.1}" \
    2>/dev/null | sed -n '/COMPLIANCE AGAINST/,$p'
