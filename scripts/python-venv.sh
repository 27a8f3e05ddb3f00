#!/usr/bin/env bash
# Installs the Python packages the tests use as independent peers into .build/python-venv (once):
# websockets (a WebSocket server Keel's client is tested against). Needs python3-venv and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.build/python-venv
if ! "$venv/bin/python" -c "import websockets" >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet websockets==17.4
fi
"$venv/bin/python" -c "import websockets; print('python-venv: websockets', websockets.__version__)"
