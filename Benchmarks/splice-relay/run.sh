#!/usr/bin/env bash
# The relay step three ways (relay-step.c): io_uring recv+send (keel-gateway's path), io_uring splice,
# and splice(2). Prints a table of CPU ns per relayed message, medians of interleaved repeats.
#
#   Benchmarks/splice-relay/run.sh [--repeats N] [--count MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=5 count=5000
while [ $# -gt 0 ]; do
    case "$1" in
        --repeats) repeats=$2; shift ;;
        --count) count=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p .build/release
cc -O2 -I Sources/CKeelLinux/include Benchmarks/splice-relay/relay-step.c Sources/CKeelLinux/shim.c -o .build/release/relay-step
results=$(mktemp)
trap 'rm -f "$results"' EXIT
sizes="64 1024 16384 65536"
for round in $(seq 1 "$repeats"); do
    for size in $sizes; do
        for mode in copy uring splice; do .build/release/relay-step "$mode" "$size" "$count" >>"$results"; done
    done
done
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else print a[int((NR+1)/2)]}'; }
value() { awk -v m="$1" -v s="$2" '$1==m && $2==s {print $3}' "$results" | median; }
echo "Relay step (one message from socket B to socket C, loopback), process CPU ns per message, medians of $repeats."
echo
echo "| size | recv+send (io_uring) | splice (io_uring) | splice(2) | io_uring splice / copy | splice(2) / copy |"
echo "|---:|---:|---:|---:|---:|---:|"
for size in $sizes; do
    copy=$(value copy "$size") uring=$(value uring "$size") plain=$(value splice "$size")
    echo "| $size | $copy | $uring | $plain | $(awk "BEGIN {printf \"%.2f\", $uring / $copy}") | $(awk "BEGIN {printf \"%.2f\", $plain / $copy}") |"
done
