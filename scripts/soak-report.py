#!/usr/bin/env python3
"""Checks and plots a soak run (scripts/soak.sh writes its directory).

  soak-report.py DIR --load-start S --load-end S [--bench-failed 0|1]

Reads each server's statistics CSV (keel-echo.csv, keel-udp-echo.csv: one sample a second, from
`--stats-file`), the fault schedule (faults.csv) and keel-bench's JSON results. Writes soak.png and
summary.txt into DIR, prints the summary, and exits 1 when a check fails:
  - every keel-bench run ended without validation failures or errors;
  - once the load stopped, each server is back to its baseline descriptors and buffers in use, and
    keel-echo has no connection open;
  - RSS beyond the buffer pool's slabs (which are resident once mapped and bounded by the pool's cap)
    has no growth trend after warm-up (the first quarter of the load, at least 30 s, counted from the
    server's first activity, and at least one full cycle of fault profiles, leaving at least 40% of the
    load to judge): the least-squares slope over that window, times its length, stays under 5% of the
    mean or 4 MiB, whichever is more.
"""
import argparse
import csv
import glob
import json
import os
import sys

SERVERS = ["keel-echo", "keel-udp-echo"]


def read_samples(path):
    with open(path) as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]


def slope(points):
    """Least-squares slope of (x, y) points."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    if variance == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / variance


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--load-start", type=float, required=True)
    parser.add_argument("--load-end", type=float, required=True)
    parser.add_argument("--bench-failed", type=int, default=0)
    args = parser.parse_args()

    lines = []
    failures = []

    def check(ok, what):
        lines.append(("PASS " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    load_seconds = args.load_end - args.load_start
    lines.append(f"load: {load_seconds:.0f} s (from {args.load_start:.1f} s to {args.load_end:.1f} s of the servers' clocks)")

    # keel-bench results.
    check(args.bench_failed == 0, "every keel-bench run exited 0")
    totals = {}
    for path in sorted(glob.glob(os.path.join(args.dir, "*.json"))):
        name = os.path.basename(path)[:-5]
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            check(False, f"{name}: no result (see {name}.err)")
            continue
        kind = "storm" if name.startswith("storm-") else name
        total = totals.setdefault(kind, {"count": 0, "bytes": 0, "errors": 0, "validation_failures": 0, "runs": 0,
                                         "unit": result.get("unit", ""), "extra": {}})
        total["runs"] += 1
        for key in ("count", "bytes", "errors", "validation_failures"):
            total[key] += int(result.get(key, 0))
        for key in ("slow_readers", "resets_mid_write", "garbage", "half_closes", "lost"):
            if key in result:
                total["extra"][key] = total["extra"].get(key, 0) + int(result[key])
    for kind, total in totals.items():
        extra = "".join(f", {key} {value}" for key, value in total["extra"].items())
        check(total["errors"] == 0 and total["validation_failures"] == 0,
              f"{kind}: {total['count']} {total['unit']} over {total['runs']} run(s), {total['bytes'] / 1e6:.1f} MB validated"
              f"{extra}, errors {total['errors']}, validation failures {total['validation_failures']}")

    # Servers: leaks and RSS trend.
    warmup = max(30.0, load_seconds / 4)
    # Every fault profile reached for the first time can raise a high-water mark once (a rate limit
    # backs sends up); judge after the first full cycle of profiles, when one comes round again.
    cycle_end = args.load_start
    faults_path = os.path.join(args.dir, "faults.csv")
    if os.path.exists(faults_path):
        with open(faults_path) as f:
            seen = set()
            for row in csv.DictReader(f):
                if row["profile"] in seen:
                    cycle_end = float(row["seconds"])
                    break
                seen.add(row["profile"])
    series = {}
    for server in SERVERS:
        path = os.path.join(args.dir, f"{server}.csv")
        if not os.path.exists(path):
            check(False, f"{server}: no statistics file")
            continue
        samples = read_samples(path)
        series[server] = samples
        before = [s for s in samples if s["seconds"] < args.load_start] or samples[:1]
        baseline, final = before[-1], samples[-1]
        during = [s for s in samples if args.load_start <= s["seconds"] <= args.load_end]
        peak = lambda key: max((s[key] for s in during), default=0)
        lines.append(f"{server}: peak RSS {peak('rss_kib') / 1024:.1f} MiB, peak descriptors {peak('fds'):.0f}, "
                     f"peak buffers in use {peak('buffers_in_use'):.0f}, slabs {peak('slab_kib') / 1024:.0f} MiB, "
                     f"acquisitions refused at the pool's cap {final['failed_acquisitions']:.0f}"
                     + (f", peak connections {peak('connections_active'):.0f}, accepted {final['accepted']:.0f}"
                        if "connections_active" in final else ""))
        check(final["fds"] == baseline["fds"],
              f"{server}: descriptors back to baseline after the load ({baseline['fds']:.0f} -> {final['fds']:.0f})")
        check(final["buffers_in_use"] == baseline["buffers_in_use"],
              f"{server}: buffers in use back to baseline ({baseline['buffers_in_use']:.0f} -> {final['buffers_in_use']:.0f})")
        if "connections_active" in final:
            check(final["connections_active"] == 0, f"{server}: no connection open after the load ({final['connections_active']:.0f})")
        # The buffer pool's slabs are resident from the moment they are mapped (MAP_POPULATE) and are
        # bounded by the pool's cap; what must stay flat is the memory beyond them.
        # Warm-up counts from the server's first activity (its first buffers in use, or RSS beyond the
        # slabs off its baseline by 1 MiB): on a busy machine a client can start well after the load window opens,
        # and its first-use step must not read as a trend. The judged window keeps at least 40% of the load.
        beyond = lambda sample: sample["rss_kib"] - sample["slab_kib"]
        active = [s["seconds"] for s in during
                  if s["buffers_in_use"] > baseline["buffers_in_use"] or abs(beyond(s) - beyond(baseline)) > 1024]
        started = active[0] if active else args.load_start
        judged_from = min(max(max(args.load_start, started) + warmup, cycle_end), args.load_end - 0.4 * load_seconds)
        steady = [(s["seconds"], s["rss_kib"] - s["slab_kib"]) for s in during if s["seconds"] >= judged_from]
        if len(steady) >= 10:
            rate = slope(steady)  # KiB per second
            span = steady[-1][0] - steady[0][0]
            mean = sum(y for _, y in steady) / len(steady)
            allowed = max(4096.0, 0.05 * mean)
            check(rate * span <= allowed,
                  f"{server}: RSS beyond the buffer slabs flat from {judged_from:.0f} s ({warmup:.0f} s of warm-up after its first "
                  f"activity at {started:.0f} s; trend {rate * 60:+.1f} KiB/min, "
                  f"{rate * span:+.0f} KiB over {span:.0f} s, allowed {allowed:.0f} KiB; mean {mean / 1024:.1f} MiB)")
        else:
            check(False, f"{server}: too few samples after warm-up to judge RSS ({len(steady)})")

    plot(args, series, warmup)
    lines.append("verdict: " + ("PASS" if not failures else f"FAIL ({len(failures)} check(s))"))
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.dir, "summary.txt"), "w") as f:
        f.write(text + "\n")
    return 0 if not failures else 1


def plot(args, series, warmup):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faults = []
    faults_path = os.path.join(args.dir, "faults.csv")
    if os.path.exists(faults_path):
        with open(faults_path) as f:
            faults = [(float(row["seconds"]), row["profile"]) for row in csv.DictReader(f)]
    colours = {"loss": "#f4cccc", "rate": "#cfe2f3", "loss+rate": "#d9d2e9"}
    panels = [("rss_kib", "RSS (MiB)", 1 / 1024), ("fds", "open descriptors", 1), ("buffers_in_use", "buffers in use", 1)]
    figure, axes = plt.subplots(len(SERVERS), len(panels), figsize=(15, 7), squeeze=False)
    for row, server in enumerate(SERVERS):
        samples = series.get(server, [])
        x = [s["seconds"] for s in samples]
        for column, (key, label, scale) in enumerate(panels):
            axis = axes[row][column]
            for (start, profile), (end, _) in zip(faults, faults[1:]):
                if profile in colours:
                    axis.axvspan(start, end, color=colours[profile], linewidth=0)
            axis.axvline(args.load_start, color="grey", linestyle=":")
            axis.axvline(args.load_end, color="grey", linestyle=":")
            axis.axvline(args.load_start + warmup, color="grey", linestyle="--", linewidth=0.8)
            axis.plot(x, [s[key] * scale for s in samples], color="black", linewidth=1, label=label)
            if key == "buffers_in_use":
                axis.plot(x, [s["buffers_held_by_kernel"] for s in samples], color="tab:blue", linewidth=1,
                          label="lent to the kernel")
                axis.legend(loc="upper right", fontsize=8)
            if key == "fds" and samples and "connections_active" in samples[0]:
                axis.plot(x, [s["connections_active"] for s in samples], color="tab:green", linewidth=1, label="connections")
                axis.legend(loc="upper right", fontsize=8)
            axis.set_title(f"{server}: {label}", fontsize=10)
            axis.set_xlabel("seconds")
            axis.set_ylim(bottom=0)
    figure.suptitle("Keel soak (shaded: loss pink, rate limit blue, both purple; dotted: load; dashed: end of warm-up)",
                    fontsize=11)
    figure.tight_layout()
    figure.savefig(os.path.join(args.dir, "soak.png"), dpi=90)


if __name__ == "__main__":
    sys.exit(main())
