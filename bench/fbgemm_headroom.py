#!/usr/bin/python3
"""How far FBGEMM runs from the ideal gather loop, per cell of the FBGEMM harness's grid.

Reads the grid CSV that ../shared/tools/fbgemm-anchor/side_by_side.sh writes (with embag in it:
/tmp/embag-fbgemm/grid.csv) and prints, over the cells that time the ideal loops (fp32 sums),
FBGEMM's fp32 time over the fastest ideal loop's: the most a kernel that runs exactly as fast as
the ideal loop could be ahead of FBGEMM in that cell. Its median bounds the median speed-up over
FBGEMM any honest kernel can reach on the machine that ran the grid.
Usage: bench/fbgemm_headroom.py [GRID.csv]"""
import collections
import csv
import statistics
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/embag-fbgemm/grid.csv"
cells = collections.defaultdict(dict)
with open(path) as f:
    for r in csv.DictReader(line for line in f if not line.startswith("#")):
        if r.get("section") != "grid":
            continue
        key = (r["threads"], r["R"], r["D"], r["dist"], r["bags"], round(int(r["lookups"]) / 2048), r["op"])
        cells[key][r["variant"]] = float(r["ms"])
headroom = []
for key, times in sorted(cells.items()):
    ideal = [ms for variant, ms in times.items() if variant.startswith("ideal")]
    if ideal and "fbgemm_f32" in times:
        headroom.append(times["fbgemm_f32"] / min(ideal))
        print("threads {} R {} D {} {} {}/L{} {}: FBGEMM at {:.2f}x the ideal loop's time".format(*key, headroom[-1]))
if not headroom:
    sys.exit(f"{path}: no cell times both fbgemm_f32 and an ideal loop")
print(f"over {len(headroom)} cells: min {min(headroom):.2f}, median {statistics.median(headroom):.2f}, "
      f"max {max(headroom):.2f}; cells where the ideal loop is 1.3x FBGEMM or more: {sum(h >= 1.3 for h in headroom)}")
