#!/usr/bin/python3
"""Latency against offered load from embag-loadgen's JSON: p50, p99 and p99.9 per run, one line per
file (e.g. batching and no batching), log latency axis.

Usage: tools/serve/plot_load.py results.json [more.json ...] -o chart.png

Needs matplotlib (Debian: apt-get install -y python3-matplotlib, for /usr/bin/python3, hence the
#! line); not a build or test dependency.
"""
import argparse
import json
import os
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="JSON files embag-loadgen run --json wrote")
    parser.add_argument("-o", "--output", required=True, help="the PNG to write")
    args = parser.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_load.py: needs matplotlib (apt-get install -y --no-install-recommends python3-matplotlib)")
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"p50_ms": ":", "p99_ms": "-", "p999_ms": "--"}
    for path, colour in zip(args.results, ["#c44e52", "#4c72b0", "#55a868", "#8172b2"]):
        report = json.load(open(path))
        runs = sorted((r for r in report["runs"] if "deploy_ms" not in r), key=lambda r: r["offered_rps"])
        label = os.path.splitext(os.path.basename(path))[0]
        for key, style in styles.items():
            ax.plot([r["offered_rps"] for r in runs], [r[key] for r in runs], style, color=colour, marker="o",
                    label=f"{label} {key[:-3].replace('p999', 'p99.9')}")
        if "saturation" in report:
            ax.axvline(report["saturation"]["achieved_rps"], color=colour, alpha=0.3)
    ax.set_yscale("log")
    ax.set_xlabel("offered load, requests/s (vertical lines: saturation, closed loop)")
    ax.set_ylabel("latency from the due send time, ms")
    ax.set_title(f"embag-serve: {report['bags']} bags over {report['tables']} tables per request")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
