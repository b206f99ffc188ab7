#!/usr/bin/env python3
"""Bar chart of embag benchmark results: GB/s per ISA, grouped by operation and D.

Usage: tools/plot_bench.py results.json [-o chart.png] [--filter REGEX] [--log]

Reads the JSON that `embag bench --json FILE` writes, or Google Benchmark's own
(`build/bench/embag_benchmark --benchmark_out=FILE --benchmark_out_format=json`). Names look like
forward/sum/avx512/f32/R:1000000/D:128/L:40/uniform/threads:1. One panel per workload and thread
count (R, L, fixed or variable length, distribution, threads); in it one group of bars per
(operation, D), one bar per ISA, the bar's roofline fraction written on it when there is one, and
the roofline (the in-process gather_roofline ceiling: roofline_bytes_per_second, or bytes_per_second /
roofline_fraction, or the suite's roofline/read entry) drawn as a black line across the group.
The suite's roofline/sequential figure, when present, is a dotted grey line across the group.

Needs matplotlib (Debian: apt-get install -y python3-matplotlib); not a build or test dependency.
"""
import argparse
import json
import os
import re
import statistics
import sys

APT_LINE = "apt-get install -y --no-install-recommends python3-matplotlib"
ISA_ORDER = ["reference", "sse2", "avx2", "avx512", "neon"]
ISA_COLOURS = {"reference": "#9e9e9e", "sse2": "#4c72b0", "avx2": "#55a868", "avx512": "#c44e52",
               "neon": "#8172b2"}
OP_ORDER = ["forward/sum", "forward/mean", "forward/max", "forward/weighted_sum", "forward/lookup",
            "backward/dense", "backward/sparse"]


def import_pyplot():
    try:
        import matplotlib
    except ImportError:
        # python3 may be another interpreter (pyenv, a venv) than the one Debian's package serves.
        debian = "/usr/bin/python3"
        if (os.path.exists(debian) and os.path.realpath(sys.executable) != os.path.realpath(debian)
                and not os.environ.get("EMBAG_PLOT_REEXEC")):
            os.environ["EMBAG_PLOT_REEXEC"] = "1"
            try:
                os.execv(debian, [debian, os.path.abspath(__file__)] + sys.argv[1:])
            except OSError:
                pass
        sys.stderr.write("plot_bench.py needs matplotlib, which %s cannot import. On Debian:\n  %s\n"
                         % (sys.executable, APT_LINE))
        sys.exit(2)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def parse_name(name):
    """forward/sum/avx512/f32/R:1000000/D:128/L:40/var/uniform/threads:1 -> dict, or None."""
    parts = name.split("/")
    if len(parts) < 5:
        return None
    fields = {"op": parts[0] + "/" + parts[1], "isa": parts[2], "dtype": parts[3], "var": False,
              "dist": ""}
    for part in parts[4:]:
        key, sep, value = part.partition(":")
        if sep and key in ("R", "D", "L", "threads"):
            try:
                fields[key] = int(value)
            except ValueError:
                return None
        elif part == "var":
            fields["var"] = True
        elif part in ("uniform", "zipf"):
            fields["dist"] = part
        # anything else (a /real_time suffix, repetitions, ...) is ignored
    if "D" not in fields:
        return None
    fields.setdefault("R", 0)
    fields.setdefault("L", 0)
    fields.setdefault("threads", 1)
    return fields


def load(path, name_filter):
    """The results of a file: one dict per benchmark run, medians when repetitions were run."""
    with open(path) as f:
        data = json.load(f)
    entries = [b for b in data.get("benchmarks", []) if not b.get("error_occurred")]
    medians = {b.get("run_name", b["name"]) for b in entries
               if b.get("run_type") == "aggregate" and b.get("aggregate_name") == "median"}
    runs = {}
    for b in entries:
        run_name = b.get("run_name", b["name"])
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") != "median":
                continue
        elif run_name in medians:
            continue
        if "bytes_per_second" not in b:
            continue
        if name_filter and not re.search(name_filter, run_name):
            continue
        fields = parse_name(run_name)
        if fields is None:
            continue
        runs.setdefault(run_name, []).append((fields, b))
    results = []
    for run_name, items in runs.items():
        fields, b = items[-1]
        r = dict(fields)
        r["name"] = run_name
        r["gbps"] = statistics.median(x["bytes_per_second"] for _, x in items) / 1e9
        if "roofline_bytes_per_second" in b:
            r["roofline_gbps"] = b["roofline_bytes_per_second"] / 1e9
        elif b.get("roofline_fraction"):
            r["roofline_gbps"] = b["bytes_per_second"] / b["roofline_fraction"] / 1e9
        if "roofline_fraction" in b:
            r["fraction"] = b["roofline_fraction"]
        label = b.get("label", "")
        r["size_class"] = label.split()[0] if label else ""
        results.append(r)
    return data.get("context", {}), results


def panel_key(r):
    return (r["R"], r["L"], r["var"], r["dist"], r["threads"])


def panel_title(key, context, classes):
    rows, pooling, var, dist, threads = key
    text = "R:%d  L:%d%s  %s  threads:%d" % (rows, pooling, " var" if var else "", dist, threads)
    if classes:
        text += "  (" + ", ".join(sorted(classes)) + "-resident)"
    elif context.get("size_class"):
        text += "  (%s-resident)" % context["size_class"]
    return text


def figure_title(context, path):
    cpu = context.get("cpu_model") or ("%s CPUs @ %s MHz" % (context.get("num_cpus", "?"),
                                                          context.get("mhz_per_cpu", "?")))
    source = context.get("executable", "")
    version = context.get("embag_version", "")
    title = "embag %s: GB/s of row data per call, by ISA (%s, %s)" % (version, os.path.basename(path),
                                                                      source or "benchmark")
    return (title + "\n" + cpu + (", host " + context["host_name"] if context.get("host_name") else "")
            + ".  Numbers on bars: fraction of the roofline measured in the same run.")


def plot(context, results, path, out, log_scale):
    plt = import_pyplot()
    kernels = [r for r in results if not r["op"].startswith("roofline/")]
    if not kernels:
        sys.stderr.write("plot_bench.py: no kernel results with bytes_per_second in %s\n" % path)
        sys.exit(1)
    # roofline/read and roofline/sequential entries, per (panel, D)
    read_line = {(panel_key(r), r["D"]): r["gbps"] for r in results if r["op"] == "roofline/read"}
    seq_line = {(panel_key(r), r["D"]): r["gbps"] for r in results if r["op"] == "roofline/sequential"}

    panels = sorted({panel_key(r) for r in kernels})
    isas_present = {r["isa"] for r in kernels}
    isas = [i for i in ISA_ORDER if i in isas_present] + sorted(isas_present - set(ISA_ORDER))

    def op_rank(op):
        return (OP_ORDER.index(op) if op in OP_ORDER else len(OP_ORDER), op)

    groups_per_panel = {}
    for key in panels:
        groups = sorted({(r["op"], r["D"]) for r in kernels if panel_key(r) == key},
                        key=lambda g: (op_rank(g[0]), g[1]))
        groups_per_panel[key] = groups
    widest = max(len(g) for g in groups_per_panel.values())
    fig_width = min(40.0, max(9.0, 0.35 * widest * (len(isas) + 1) + 2.0))
    fig, axes = plt.subplots(len(panels), 1, figsize=(fig_width, 3.4 * len(panels) + 0.9),
                             squeeze=False, layout="constrained")
    bar_width = 0.8 / len(isas)
    legend_handles = {}
    for ax, key in zip(axes[:, 0], panels):
        groups = groups_per_panel[key]
        by_group = {}
        for r in kernels:
            if panel_key(r) == key:
                by_group.setdefault((r["op"], r["D"]), {})[r["isa"]] = r
        classes = {r["size_class"] for g in by_group.values() for r in g.values() if r["size_class"]}
        top = 0.0
        for x, group in enumerate(groups):
            members = by_group[group]
            for k, isa in enumerate(isas):
                r = members.get(isa)
                if r is None:
                    continue
                left = x - 0.4 + k * bar_width
                bar = ax.bar(left + bar_width / 2, r["gbps"], bar_width * 0.92,
                             color=ISA_COLOURS.get(isa, "#dd8452"), label=isa)
                legend_handles.setdefault(isa, bar)
                top = max(top, r["gbps"])
                if "fraction" in r and len(groups) * len(isas) <= 80:
                    ax.text(left + bar_width / 2, r["gbps"], "%.2f" % r["fraction"], rotation=90,
                            ha="center", va="bottom", fontsize=6.5, color="#333333", zorder=4,
                            bbox=dict(facecolor="white", edgecolor="none", pad=0.6, alpha=0.75))
            rooflines = [r["roofline_gbps"] for r in members.values() if "roofline_gbps" in r]
            roofline = statistics.median(rooflines) if rooflines else read_line.get((key, group[1]))
            if roofline:
                line = ax.hlines(roofline, x - 0.45, x + 0.45, colors="black", linewidth=2.0,
                                 label="roofline (gather)", zorder=3)
                legend_handles.setdefault("roofline (gather)", line)
                top = max(top, roofline)
            seq = seq_line.get((key, group[1]))
            if seq:
                line = ax.hlines(seq, x - 0.45, x + 0.45, colors="#777777", linewidth=1.2,
                                 linestyles="dotted", label="sequential read", zorder=3)
                legend_handles.setdefault("sequential read", line)
                top = max(top, seq)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(["%s\nD:%d" % (op.replace("/", "/\n", 1) if len(groups) > 8 else op, d)
                            for op, d in groups], fontsize=8)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        if log_scale:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, top * 1.18 if top > 0 else 1)
        ax.set_ylabel("GB/s")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_title(panel_title(key, context, classes), fontsize=10, loc="left")
    order = [i for i in isas if i in legend_handles] + [k for k in ("roofline (gather)", "sequential read")
                                                          if k in legend_handles]
    axes[0, 0].legend([legend_handles[k] for k in order], order, loc="lower right", bbox_to_anchor=(1.0, 1.0),
                      ncol=len(order), fontsize=8, frameon=False, borderaxespad=0.2)
    fig.suptitle(figure_title(context, path), x=0.01, ha="left", fontsize=10)
    fig.savefig(out, dpi=110)
    print("wrote %s (%d results, %d panels)" % (out, len(kernels), len(panels)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", help="embag bench --json output or Google Benchmark JSON")
    parser.add_argument("-o", "--output", help="PNG to write (default: the JSON's name with .png)")
    parser.add_argument("--filter", help="only benchmarks whose name matches this regular expression")
    parser.add_argument("--log", action="store_true", help="logarithmic GB/s axis")
    args = parser.parse_args()
    out = args.output or os.path.splitext(args.json)[0] + ".png"
    context, results = load(args.json, args.filter)
    plot(context, results, args.json, out, args.log)


if __name__ == "__main__":
    main()
