"""The verdict of a soak run (scripts/soak.sh): reads OUT/samples.csv and OUT/jobs.json,
fits a least-squares line to each series over the run's second half (the first is warm-up:
pools fill, allocators grow their arenas), and fails when a series grows by more than it
may over the whole run at that slope and the slope is more than three standard errors
above zero. Writes OUT/soak.png (every curve, with its fit) and
OUT/verdict.md (a table: start, end, slope per hour, verdict), and exits 1 on a failure.

    python3 scripts/soak_report.py OUT
"""

import csv
import json
import statistics
import sys
from pathlib import Path

# What each series may grow by over the run, at its fitted slope, before it is called
# unbounded: an absolute floor, or a share of its median in the first half, whichever is
# larger. Sessions come and go, so the counts move by a few between samples; a leak of one
# per session grows by hundreds over an hour.
ALLOWED = {
    "rss_kb": (32 * 1024, 0.15),
    "fds": (16, 0.10),
    "threads": (8, 0.10),
    "tasks": (32, 0.10),
    "tmp_entries": (16, 0.10),
    "data_entries": (64, 0.10),
    "processes": (16, 0.10),
    "redis_keys": (32, 0.10),
    "kept_contexts": (16, 0.10),
}
LABELS = {
    "rss_kb": "broker RSS (MiB)",
    "fds": "open descriptors",
    "threads": "threads",
    "tasks": "async tasks",
    "tmp_entries": "temp dir entries",
    "data_entries": "data_dir entries",
    "processes": "processes under the broker",
    "redis_keys": "Redis keys",
    "kept_contexts": "contexts the identity keepers hold",
}


def fit(xs, ys):
    """Slope, intercept and the slope's standard error of the least-squares line."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0 or len(xs) < 3:
        return 0.0, my, 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    residuals = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys))
    return slope, intercept, (residuals / (len(xs) - 2) / sxx) ** 0.5


def main(out: Path) -> int:
    rows = list(csv.DictReader((out / "samples.csv").open()))
    # The wind-down after the client stopped (sessions ending, nothing new) is not the
    # steady state the fit is about.
    end_file = out / "driver_end"
    if end_file.exists():
        driver_end = float(end_file.read_text())
        rows = [r for r in rows if float(r["t"]) <= driver_end]
    if len(rows) < 8:
        print(f"soak: only {len(rows)} samples; too few to judge", file=sys.stderr)
        return 1
    t = [float(r["t"]) for r in rows]
    duration = t[-1] - t[0]
    half = len(rows) // 2
    results = []
    for name, (floor, share) in ALLOWED.items():
        ys = [float(r[name] or 0) for r in rows]
        slope, intercept, error = fit(t[half:], ys[half:])
        allowed = max(floor, share * statistics.median(ys[:half]))
        growth = slope * duration
        # Grows: by more than allowed over the run, and not by chance (a series that swings
        # with the sessions running at each sample fits a slope from noise alone).
        grows = growth > allowed and slope > 3 * error
        results.append(
            {
                "name": name,
                "start": statistics.median(ys[: max(3, half // 4)]),
                "end": statistics.median(ys[-max(3, half // 4) :]),
                "max": max(ys),
                "per_hour": slope * 3600,
                "growth": growth,
                "allowed": allowed,
                "flat": not grows,
                "fit": (slope, intercept),
                "error": error * 3600,
                "ys": ys,
            }
        )
    jobs = json.loads((out / "jobs.json").read_text()) if (out / "jobs.json").exists() else {}
    plot(out, t, half, results)
    write_verdict(out, duration, len(rows), results, jobs)
    print((out / "verdict.md").read_text())
    return 0 if all(r["flat"] for r in results) else 1


def plot(out, t, half, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [x / 3600 for x in t]
    rows = (len(results) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(12, 3 * rows), sharex=True)
    for ax, r in zip(axes.flat, results):
        scale = 1 / 1024 if r["name"] == "rss_kb" else 1
        ax.plot(hours, [y * scale for y in r["ys"]], lw=0.8)
        slope, intercept = r["fit"][:2]
        ax.plot(
            [hours[half], hours[-1]],
            [(slope * t[half] + intercept) * scale, (slope * t[-1] + intercept) * scale],
            "r--",
            lw=1.2,
        )
        ax.set_title(f"{LABELS[r['name']]}: {'flat' if r['flat'] else 'GROWS'}", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("hours")
    fig.suptitle("cdpgate soak: samples, and the fit over the second half (dashed)")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=80)


def write_verdict(out, duration, samples, results, jobs):
    done = sum(jobs.get("jobs", {}).values())
    failed = sum(jobs.get("failures", {}).values())
    lines = [
        f"Soak of {duration / 3600:.2f} h, {samples} samples; jobs done {done}, failed {failed}.",
        "",
        "| series | start (median) | end (median) | max | fitted slope / h (2nd half) ± 1 s.e. | growth over run | allowed | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["name"] == "rss_kb":  # shown in MiB
            r = {**r, **{k: r[k] / 1024 for k in ("start", "end", "max", "per_hour", "error", "growth", "allowed")}}
        lines.append(
            f"| {LABELS[r['name']]} | {r['start']:.0f} | {r['end']:.0f} | {r['max']:.0f} | {r['per_hour']:+.1f} ± {r['error']:.1f} "
            f"| {r['growth']:+.1f} | {r['allowed']:.0f} | {'flat' if r['flat'] else 'GROWS'} |"
        )
    if failed:
        lines += ["", "Failed jobs by kind (first errors):", ""]
        for kind, n in jobs["failures"].items():
            if n:
                lines.append(f"- {kind}: {n} of {n + jobs['jobs'][kind]}: {'; '.join(jobs['errors'][kind][:2])}")
    (out / "verdict.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1])))
