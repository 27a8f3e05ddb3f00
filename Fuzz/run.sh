#!/usr/bin/env bash
# Fuzzes one parser with libFuzzer, under AddressSanitizer, for a bounded time.
#
#   Fuzz/run.sh TARGET SECONDS        e.g. Fuzz/run.sh FuzzLineDecoder 30
#   Fuzz/run.sh all SECONDS           every target in turn
#
# Targets: FuzzLineDecoder, FuzzLengthPrefixedDecoder, FuzzFixedSizeDecoder, FuzzSocketAddress,
# FuzzHTTPRequest (the HTTP/1.1 request parser, input split at a chosen point), FuzzWebSocketServer (frames
# after a WebSocket upgrade, through the server's filters), FuzzProxyProtocol (the PROXY header parser and
# the listener filter), FuzzDeflateStream (the deflate filter: a peer's stream, and a round trip),
# FuzzPubSubProtocol (keel-pubsub's line and binary command parsers), FuzzTLSServer (the server side
# of the TLS filter; needs the openssl command for its certificate). Each
# starts from its committed seeds in Fuzz/Corpus/TARGET (read-only: what the run finds goes to a scratch
# corpus under Fuzz/.corpus/, kept between runs). A crash exits non-zero and leaves the reproducer in
# Fuzz/artifacts/; replay it with `Fuzz/.build/debug/TARGET Fuzz/artifacts/FILE`.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: Fuzz/run.sh TARGET|all SECONDS}
seconds=${2:-30}
targets=(FuzzLineDecoder FuzzLengthPrefixedDecoder FuzzFixedSizeDecoder FuzzSocketAddress FuzzHTTPRequest FuzzWebSocketServer FuzzProxyProtocol FuzzDeflateStream FuzzPubSubProtocol FuzzTLSServer)
[ "$target" = all ] && selected=("${targets[@]}") || selected=("$target")
for name in "${selected[@]}"; do
    [ -d "Corpus/$name" ] || { echo "unknown target $name (one of: ${targets[*]})" >&2; exit 2; }
done
# lld, not gold: gold fails on libFuzzer's runtime here. -parse-as-library: each target's entry is an
# @_cdecl function, not top-level code.
flags=(-c debug -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -use-ld=lld)
for name in "${selected[@]}"; do
    echo "== building $name (libFuzzer + AddressSanitizer)" >&2
    swift build "${flags[@]}" --product "$name" >&2
done
mkdir -p artifacts
for name in "${selected[@]}"; do
    echo "== fuzzing $name for ${seconds}s" >&2
    mkdir -p ".corpus/$name"
    # Swift's backtracer and libFuzzer's crash handler disagree: let libFuzzer report.
    SWIFT_BACKTRACE=enable=no ".build/debug/$name" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
        -artifact_prefix="artifacts/$name-" -print_final_stats=1 ".corpus/$name" "Corpus/$name"
done
