# Shared by Benchmarks/compare.sh and Benchmarks/memory.sh: build the comparison servers and start
# or stop one by name. Source it from the repository root.

# The side-by-side scripts' options: --repeats N (default 3), --seconds S (default 5) and --cases
# "..." (default: $cases as the script set it), into $repeats, $seconds and $cases.
parse_compare_options() {
    repeats=3 seconds=5
    while [ $# -gt 0 ]; do
        case "$1" in
            --repeats) repeats=$2; shift ;;
            --seconds) seconds=$2; shift ;;
            --cases) cases=$2; shift ;;
            *) echo "unknown option $1" >&2; exit 2 ;;
        esac
        shift
    done
}

build_servers() {
    swift build -c release --product keel-echo >/dev/null
    swift build -c release --product keel-bench >/dev/null
    swift build -c release --package-path Benchmarks --product nio-echo-server >/dev/null
    mkdir -p .build/release
    cc -O2 -I Sources/CKeelLinux/include Benchmarks/c-uring-echo/echo.c Sources/CKeelLinux/shim.c -o .build/release/c-uring-echo
}

# With two or more CPUs, servers run pinned to the last CPU and the load client to the first, so the
# two never compete for a core and the scheduler does not migrate them mid-run, which narrows the
# run-to-run spread. PIN=0 turns it off.
if [ "${PIN:-1}" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    SERVER_CPU=(taskset -c "$(($(nproc) - 1))")
    CLIENT_CPU=(taskset -c 0)
else
    SERVER_CPU=()
    CLIENT_CPU=()
fi

# Starts a server command pinned to the server CPU and waits for its `listening on HOST:PORT` line:
# sets SERVER_PID and SERVER_PORT.
launch_server() {
    local out
    out=$(mktemp)
    "${SERVER_CPU[@]}" "$@" >"$out" 2>/dev/null &
    SERVER_PID=$!
    for _ in $(seq 1 200); do grep -q "listening on" "$out" && break; sleep 0.05; done
    SERVER_PORT=$(grep -o "listening on .*" "$out" | sed 's/.*://')
    rm -f "$out"
}

start_server() {  # name -> sets SERVER_PID and SERVER_PORT
    case "$1" in
        keel-io_uring) launch_server .build/release/keel-echo --port 0 --threads 1 --backend io_uring ;;
        keel-epoll) launch_server .build/release/keel-echo --port 0 --threads 1 --backend epoll ;;
        keel-io_uring-proxy) launch_server .build/release/keel-echo --port 0 --threads 1 --backend io_uring --proxy-protocol ;;
        # Zero-copy sends from 16 KiB queued, even though loopback copies: what zero-copy itself costs.
        keel-io_uring-zc) launch_server .build/release/keel-echo --port 0 --threads 1 --backend io_uring --zero-copy-threshold 16384 --zero-copy-always ;;
        # Without the registered ring descriptor: its before/after.
        keel-io_uring-noreg) launch_server env KEEL_FEATURES_OFF=registered-ring .build/release/keel-echo --port 0 --threads 1 --backend io_uring ;;
        # The same zero-copy sends without registered pool slabs: what registering them saves.
        keel-io_uring-zc-noregbuf) launch_server env KEEL_FEATURES_OFF=registered-buffers .build/release/keel-echo --port 0 --threads 1 --backend io_uring --zero-copy-threshold 16384 --zero-copy-always ;;
        # Without receive bundles: their before/after.
        keel-io_uring-nobundles) launch_server env KEEL_FEATURES_OFF=receive-bundles .build/release/keel-echo --port 0 --threads 1 --backend io_uring ;;
        # Without the registered file table: its before/after.
        keel-io_uring-nofiles) launch_server env KEEL_FEATURES_OFF=registered-files .build/release/keel-echo --port 0 --threads 1 --backend io_uring ;;
        # Without skipped completions (every close posts one): their before/after.
        keel-io_uring-noskip) launch_server env KEEL_FEATURES_OFF=cqe-skip .build/release/keel-echo --port 0 --threads 1 --backend io_uring ;;
        # Without direct descriptors (accepted sockets get ordinary descriptors): their before/after.
        keel-io_uring-nodirect) launch_server env KEEL_FEATURES_OFF=direct-descriptors .build/release/keel-echo --port 0 --threads 1 --backend io_uring ;;
        # An earlier keel-echo build (KEEL_BEFORE=PATH): a change's before/after in one run.
        keel-before) launch_server "${KEEL_BEFORE:?KEEL_BEFORE=path of an earlier keel-echo}" --port 0 --threads 1 --backend io_uring ;;
        keel-before-epoll) launch_server "${KEEL_BEFORE:?KEEL_BEFORE=path of an earlier keel-echo}" --port 0 --threads 1 --backend epoll ;;
        nio) launch_server Benchmarks/.build/release/nio-echo-server 0 1 ;;
        c-io_uring) launch_server .build/release/c-uring-echo 0 ;;
        # The C server with an incrementally consumed provided-buffer ring (IOU_PBUF_RING_INC).
        c-io_uring-inc) launch_server .build/release/c-uring-echo 0 --incremental ;;
        # The C server with direct descriptors (accept into file-table slots, no process descriptors).
        c-io_uring-direct) launch_server .build/release/c-uring-echo 0 --direct ;;
        *) echo "unknown server $1" >&2; return 1 ;;
    esac
}

stop_server() { kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# Server CPU (user + system clock ticks) of a process, a field of keel-bench's JSON, and the median of
# numbers on standard input.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
field() { echo "$1" | sed "s/.*\"$2\": \([0-9.]*\).*/\1/"; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else print a[int((NR+1)/2)]}'; }

# From a results file whose rows are `CASE SERVER values...` with the round number in column ROUND:
# the median over rounds of SERVER's column K divided by REFERENCE's in the same round (neighbouring
# runs share the machine's drift), to two decimals; and the median of one server's column K.
round_ratio() {  # results case server reference k round
    awk -v c="$2" -v s="$3" -v r="$4" -v k="$5" -v n="$6" '$1==c && $2==s {mine[$n]=$k} $1==c && $2==r {ref[$n]=$k}
        END {for (x in mine) if (ref[x] > 0) printf "%.4f\n", mine[x] / ref[x]}' "$1" | median | awk '{printf "%.2f", $1}'
}
round_value() {  # results case server k
    awk -v c="$2" -v s="$3" -v k="$4" '$1==c && $2==s {print $k}' "$1" | median
}
