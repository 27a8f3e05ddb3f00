#!/usr/bin/env bash
# Counts allocations on Keel's steady-state paths (TCP echo per message, zero-copy TCP echo, TLS 1.2 and 1.3 and WebSocket echo per
# message, accept per connection, UDP echo per datagram and in bursts (segmented sends), timer set/cancel and reset) on both backends with ordo-one/benchmark's malloc
# interposer, and compares them with the stored thresholds in Benchmarks/Thresholds. Any difference,
# worse or better, exits nonzero. After an intended change, store new thresholds with (from Benchmarks/:
# from the repository root the tool writes ./Thresholds there instead):
#   cd Benchmarks && swift package --allow-writing-to-package-directory \
#       benchmark thresholds update --target KeelAllocations
set -euo pipefail
cd "$(dirname "$0")"
swift package benchmark thresholds check --target KeelAllocations --no-progress "$@"
