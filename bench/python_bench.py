#!/usr/bin/python3
"""embag from Python against the C++ call and against PyTorch, in one process.

1. Call overhead: B = 1 bag of L = 1 index on a small table, per call: the library's forward
   called from C++ in a loop (embag._embag._time_forward), embag.embedding_bag on NumPy arrays and
   on torch tensors, and torch.nn.functional.embedding_bag; then each variant's single call right
   after a pass over twice the last-level cache, as after a large call, whose code and data (the
   library's, pybind11's, the interpreter's) come back from DRAM: what Python adds to a large call.
2. Large calls: embag bench's default workload (R = 1M rows, D = 128, B = 2048 bags of L = 40,
   uniform indices, 8 index sets taken in turn) and its L = 1 and Zipf (s = 1.05) variants, on 1
   and 2 threads (embag.set_num_threads and torch.set_num_threads): forward sum, mean and max;
   the dense backward of sum and mean into a gradient the caller keeps ("bwd into": C++ and
   Python, the cost of the call), and into a new zeroed R x D gradient per call ("bwd new": embag
   on tensors, torch.zeros as embag.nn does, against torch's aten._embedding_bag_backward, what
   autograd runs for F.embedding_bag, which allocates its gradient alike); then a training step's
   forward + backward through embag.nn.EmbeddingBag and torch.nn.EmbeddingBag with sparse
   gradients (mode sum; "train step", in the tensors and torch columns).
3. Paired rounds (--parts parity, not in the default parts): each workload's forward sum on 1
   and 2 threads (--threads), the C++ loop, the library's call timed alone inside the extension
   once per Python-level iteration ("C++ alone", which starts after the interpreter's work as the
   Python calls do), embag.embedding_bag on NumPy arrays and on tensors, and torch's
   F.embedding_bag, one after another in each of 101 rounds, each variant timed on about 20 ms
   of calls after as many of its own untimed, so that each ratio is of calls a few tens of
   milliseconds apart: the median ratio over the rounds (Python over C++, torch over embag), with
   the 95% interval of that median (order statistics). That is what "within 2% of C++" and
   "faster than torch" can be checked on where a single best-of-5 moves by more than that from
   run to run.
4. Single calls (--parts calls, not in the default parts): each workload's forward sum on 1 and 2
   threads, the library's call timed alone inside the extension, embag.embedding_bag on NumPy
   arrays and on tensors, one call at a time in turns, each call on the next index set: the median
   ratio of adjacent calls; then embag on tensors and torch in turns alike (see single_calls).

Each figure is the best of 5 runs of a loop of calls (up to 50; about 0.15 s of calls for slow
variants), after 96 warm-up calls (embag's prefetch trials), each run after 20 ms of the variant's
own calls (torch's OpenMP threads spin after its calls); the runs go round the variants in turn
(see best_time).
Run from the repository root after building: /usr/bin/python3 bench/python_bench.py [--quick]
[--parts overhead,L1] [--threads 1] (build/python is put first on sys.path for you)."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "python"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import embag  # noqa: E402
import embag.nn  # noqa: E402
from embag import _embag  # noqa: E402

MODES = {"sum": 0, "mean": 1, "max": 2}  # torch's mode numbers for aten._embedding_bag


def timed(run, calls):
    start = time.perf_counter()
    own = run(calls)
    return own if own is not None else time.perf_counter() - start


def best_time(variants, calls, repeats, run_seconds=0.15, settle_seconds=0.02, warm_up_calls=96,
              warm_up_seconds=2.0):
    """{name: seconds per call}, the best of `repeats` runs of each variant, a run being up to
    `calls` calls, fewer for a slow variant (about run_seconds a run, at least 3 calls); a variant
    returning a number timed itself (the C++ loop).

    First each variant warms up: warm_up_calls calls (or warm_up_seconds of them), since embag's
    first calls on a large table try prefetch settings (32 untimed calls, then 8 on each of up to
    4 candidates) and a run among them would time the trials. Then the runs go round the variants
    in turn, repeats times, so that a drift of the machine (the 480 MiB LLC's contents, a
    neighbour's load) falls on every variant alike: runs of one variant back to back had made an
    L = 1 forward 0.5x or 1.2x torch's from one run of this script to the next. Each run comes after
    settle_seconds of its variant's own calls: torch's OpenMP threads spin for about 5 ms after
    each parallel loop, holding the core that embag's TBB worker then waits for (embag's 2-thread
    calls ran at its 1-thread speed for 5 ms after a torch operation), so a run right after torch's
    would time torch's threads, not embag's. The README gives that interference's own figures."""
    counts = {}
    for name, run in variants.items():
        start, done = time.perf_counter(), 0
        while done < warm_up_calls and time.perf_counter() - start < warm_up_seconds:
            run(8)
            done += 8
        counts[name] = max(3, min(calls, int(run_seconds / (timed(run, 3) / 3))))
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            while time.perf_counter() - start < settle_seconds:
                run(counts[name])
            best[name] = min(best[name], timed(run, counts[name]) / counts[name])
    return best


def alone(call):
    """call, timed by itself: the run returns its seconds. A Python call after a large one is timed
    so, not through loop(): a loop of one call added about 5 us of its own in those caches (the
    empty call 7.5 us through loop(), 2.1 timed alone)."""
    pc = time.perf_counter

    def run(*args):
        start = pc()
        call(*args)
        return pc() - start
    return run


def loop(function):
    def run(calls):
        for i in range(calls):
            function(i)
    return run


def overhead(repeats):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((1000, 128)).astype(np.float32)
    indices, offsets = np.array([17]), np.array([0])
    out = np.empty((1, 128), np.float32)
    tw, ti, to = torch.from_numpy(weight), torch.from_numpy(indices), torch.from_numpy(offsets)
    variants = {
        "C++ forward": lambda calls: _embag._time_forward(weight, [(indices, offsets)], "sum", out, calls),
        "embag, NumPy": loop(lambda i: embag.embedding_bag(indices, weight, offsets, mode="sum")),
        "embag, torch": loop(lambda i: embag.embedding_bag(ti, tw, to, mode="sum")),
        "torch F.embedding_bag": loop(lambda i: F.embedding_bag(ti, tw, to, mode="sum")),
    }
    embag.set_num_threads(1)
    torch.set_num_threads(1)
    best = best_time(variants, 20000, repeats)
    print("call overhead: B = 1, L = 1, R = 1000, D = 128, mode sum, 1 thread (us per call)")
    for name, seconds in best.items():
        extra = "" if name == "C++ forward" else f"   +{(seconds - best['C++ forward']) * 1e6:.2f} us over C++"
        print(f"  {name:24s} {seconds * 1e6:8.2f}{extra}")
    print()
    # The same call after a pass over more memory than the last-level cache, as after a large call
    # (the default workload reads 42 MB of rows): the library's code and data, and the
    # interpreter's, come back from DRAM. One call per pass, timed alone; medians of the rounds.
    flush = np.ones(llc_bytes() // 2, np.float32)  # twice the LLC
    cold = {
        "C++ forward": lambda: _embag._time_forward(weight, [(indices, offsets)], "sum", out, 1),
        "embag, NumPy": alone(lambda: embag.embedding_bag(indices, weight, offsets, mode="sum")),
        "embag, torch": alone(lambda: embag.embedding_bag(ti, tw, to, mode="sum")),
        "torch F.embedding_bag": alone(lambda: F.embedding_bag(ti, tw, to, mode="sum")),
        "the timer alone": alone(lambda: None),
    }
    rounds = 21 if repeats < 5 else 101
    seconds = {name: [] for name in cold}
    for _ in range(rounds):
        for name, run in cold.items():
            flush.sum()
            seconds[name].append(run())
    median = {name: sorted(values)[rounds // 2] for name, values in seconds.items()}
    print(f"the same call after a pass over {flush.nbytes >> 20} MiB (twice the LLC), one call per pass "
          f"(us, medians of {rounds} rounds)")
    for name, value in median.items():
        extra = "" if name in ("C++ forward", "the timer alone") else f"   +{(value - median['C++ forward']) * 1e6:.2f} us over C++"
        print(f"  {name:24s} {value * 1e6:8.2f}{extra}")
    print()


def llc_bytes():
    """The last-level cache's size as glibc reports it (0 or missing in some guests: 32 MiB then)."""
    for name in ("SC_LEVEL4_CACHE_SIZE", "SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        try:
            size = os.sysconf(name)
        except (ValueError, OSError):
            continue
        if size > 0:
            return size
    return 32 << 20


def zipf_rows(rng, rows, count, exponent=1.05):
    """Row ids drawn by rank from Zipf(exponent) over `rows` ranks, the hot ranks scattered over
    the table by a permutation (as bench/workload.cpp draws them)."""
    cdf = np.cumsum(1.0 / np.arange(1, rows + 1) ** exponent)
    ranks = np.searchsorted(cdf / cdf[-1], rng.random(count))
    return rng.permutation(rows)[np.minimum(ranks, rows - 1)]


def workload(rows, dim, bags, pooling, dist, sets=8):
    rng = np.random.default_rng(42)
    weight = rng.uniform(-1, 1, (rows, dim)).astype(np.float32)
    index_sets = []
    for _ in range(sets):
        count = bags * pooling
        indices = zipf_rows(rng, rows, count) if dist == "zipf" else rng.integers(0, rows, count)
        index_sets.append((indices.astype(np.int64), np.arange(0, count, pooling, dtype=np.int64)))
    return weight, index_sets


def large(name, rows, dim, bags, pooling, dist, threads, calls, repeats):
    weight, sets = workload(rows, dim, bags, pooling, dist)
    tw = torch.from_numpy(weight)
    tsets = [(torch.from_numpy(i), torch.from_numpy(o)) for i, o in sets]
    out = np.empty((bags, dim), np.float32)
    grad_output = np.random.default_rng(7).standard_normal((bags, dim)).astype(np.float32)
    tgrad = torch.from_numpy(grad_output)
    grad_weight = np.zeros((rows, dim), np.float32)
    tgrad_weight = torch.from_numpy(grad_weight)
    n = len(sets)
    print(f"{name}: R = {rows}, D = {dim}, B = {bags}, L = {pooling}, {dist}, {threads} thread(s) "
          f"(ms per call; ratios above 1: embag faster)")
    print(f"  {'':16s} {'C++':>8s} {'NumPy':>8s} {'tensors':>8s} {'torch':>8s}  {'Py/C++':>7s} {'torch/NumPy':>11s} "
          f"{'torch/tensors':>13s}")
    for mode in ("sum", "mean", "max"):
        aten = {}

        def torch_forward(i, mode=mode):
            indices, offsets = tsets[i % n]
            F.embedding_bag(indices, tw, offsets, mode=mode)

        variants = {
            "C++": lambda c, mode=mode: _embag._time_forward(weight, sets, mode, out, c),
            "NumPy": loop(lambda i, mode=mode: embag.embedding_bag(sets[i % n][0], weight, sets[i % n][1], mode=mode)),
            "tensors": loop(lambda i, mode=mode: embag.embedding_bag(tsets[i % n][0], tw, tsets[i % n][1], mode=mode)),
            "torch": loop(torch_forward),
        }
        report(f"forward {mode}", best_time(variants, calls, repeats))
        if mode == "max":
            continue
        # torch's backward (what autograd runs for F.embedding_bag) takes its forward's bookkeeping
        for i, (indices, offsets) in enumerate(tsets):
            _, offset2bag, bag_size, maximum = torch.ops.aten._embedding_bag(tw, indices, offsets, False, MODES[mode])
            aten[i] = (indices, offsets, offset2bag, bag_size, maximum)

        def torch_backward(i, mode=mode):
            indices, offsets, offset2bag, bag_size, maximum = aten[i % n]
            torch.ops.aten._embedding_bag_backward(tgrad, indices, offsets, offset2bag, bag_size, maximum, rows, False,
                                                   MODES[mode], False, None, -1)

        # into a gradient the caller keeps (what C++ callers do): the cost of the Python call
        variants = {
            "C++": lambda c, mode=mode: _embag._time_backward_dense(sets, mode, grad_output, grad_weight, c),
            "NumPy": loop(lambda i, mode=mode: embag.embedding_bag_backward(
                grad_output, sets[i % n][0], rows, sets[i % n][1], mode=mode, grad_weight=grad_weight)),
            "tensors": loop(lambda i, mode=mode: embag.embedding_bag_backward(
                tgrad, tsets[i % n][0], rows, tsets[i % n][1], mode=mode, grad_weight=tgrad_weight)),
        }
        report(f"bwd into {mode}", best_time(variants, calls, repeats))
        # into a new zeroed R x D gradient each call, as autograd's dense backward does (embag.nn's
        # is torch.zeros, as torch's): against torch
        variants = {
            "tensors": loop(lambda i, mode=mode: embag.embedding_bag_backward(
                tgrad, tsets[i % n][0], rows, tsets[i % n][1], mode=mode)),
            "torch": loop(torch_backward),
        }
        report(f"bwd new {mode}", best_time(variants, calls, repeats))

    modules = {}
    for label, module in (("embag", embag.nn.EmbeddingBag), ("torch", torch.nn.EmbeddingBag)):
        modules[label] = module.from_pretrained(tw, freeze=False, mode="sum", sparse=True)

    def step(label):
        def run(i):
            bag = modules[label]
            bag.weight.grad = None
            bag(tsets[i % n][0], tsets[i % n][1]).backward(tgrad)
        return loop(run)

    best = best_time({label: step(label) for label in modules}, calls, repeats)
    report("train step sum", {"tensors": best["embag"], "torch": best["torch"]})
    if pooling == 1:  # the same rows as plain lookups: embag.nn.Embedding against torch.nn.Embedding
        lookups = {label: module.from_pretrained(tw, freeze=False, sparse=True)
                   for label, module in (("embag", embag.nn.Embedding), ("torch", torch.nn.Embedding))}

        def lookup_step(label):
            def run(i):
                lookup = lookups[label]
                lookup.weight.grad = None
                lookup(tsets[i % n][0]).backward(tgrad)
            return loop(run)

        best = best_time({label: lookup_step(label) for label in lookups}, calls, repeats)
        report("lookup step", {"tensors": best["embag"], "torch": best["torch"]})
    print()


def parity(name, pooling, dist, threads, rounds=101, round_seconds=0.02):
    """Python's time over the C++ loop's, and torch's over embag's, for a workload's forward sum
    (on `threads` threads), from rounds of adjacent runs of about round_seconds each (see the module
    docstring): the median per-round ratio and the 95% interval of the median, ranks from the
    binomial(rounds, 1/2) distribution."""
    weight, sets = workload(1_000_000, 128, 2048, pooling, dist)
    tw = torch.from_numpy(weight)
    tsets = [(torch.from_numpy(i), torch.from_numpy(o)) for i, o in sets]
    out = np.empty((2048, 128), np.float32)
    n = len(sets)
    # "C++ alone": each call timed inside the extension, one per Python-level iteration, so that
    # like the Python calls it starts after the interpreter's own work (a call right after another
    # in the C++ loop found more of what it needs cached: at L = 1, 1.15-1.18x faster than either)
    variants = {
        "C++": lambda c: _embag._time_forward(weight, sets, "sum", out, c),
        "C++ alone": lambda c: sum(_embag._time_forward(weight, [sets[i % n]], "sum", out, 1) for i in range(c)),
        "NumPy": loop(lambda i: embag.embedding_bag(sets[i % n][0], weight, sets[i % n][1], mode="sum")),
        "tensors": loop(lambda i: embag.embedding_bag(tsets[i % n][0], tw, tsets[i % n][1], mode="sum")),
        "torch": loop(lambda i: F.embedding_bag(tsets[i % n][0], tw, tsets[i % n][1], mode="sum")),
    }
    embag.set_num_threads(threads)
    torch.set_num_threads(threads)
    for run in variants.values():  # past the prefetch trials
        run(96)
    calls = max(3, int(round_seconds / (timed(variants["C++"], 10) / 10)))
    pairs = {"NumPy / C++": ("NumPy", "C++"), "tensors / C++": ("tensors", "C++"),
             "NumPy / C++ alone": ("NumPy", "C++ alone"), "tensors / C++ alone": ("tensors", "C++ alone"),
             "torch / NumPy": ("torch", "NumPy"), "torch / tensors": ("torch", "tensors")}
    ratios = {label: [] for label in pairs}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))  # none always first
        seconds = {}
        for v in order:
            # untimed calls first: on 2 threads, a call right after torch's found its OpenMP
            # threads still spinning on the second core (the embag call after torch's took 1.31x
            # the C++ loop's time, 1.05x after NumPy's)
            variants[v](calls)
            seconds[v] = timed(variants[v], calls) / calls
        for label, (top, bottom) in pairs.items():
            ratios[label].append(seconds[top] / seconds[bottom])
    # the median's 95% interval: ranks k and rounds - 1 - k, k the largest with P(Bin <= k - 1) <= 2.5%
    from math import comb
    k, tail = 0, 0.0
    while tail + comb(rounds, k) / 2**rounds <= 0.025:
        tail += comb(rounds, k) / 2**rounds
        k += 1
    print(f"paired rounds, {name}: R = 1M, D = 128, B = 2048, L = {pooling}, {dist}, forward sum, "
          f"{threads} thread{'s' if threads > 1 else ''}; "
          f"{rounds} rounds of {calls} calls per variant")
    for label, values in ratios.items():
        values.sort()
        print(f"  {label:20s} median {values[rounds // 2]:.4f}, 95% interval of the median "
              f"[{values[k]:.4f}, {values[rounds - 1 - k]:.4f}]")
    print()


def single_calls(name, pooling, dist, threads, calls=600):
    """Call by call, in two sets of turns. First Python's time over the library's: each variant's
    call timed alone (the library's inside the extension, after the interpreter's own work, as a
    C++ server's call comes after its other work; the Python calls around the whole call), the
    variants taking turns in a rotating order and every call on the next of the 8 index sets, so
    that no call finds its own set's rows just read; the median of the ratios of adjacent calls
    (each Python call over the library's call next to it), with the 95% interval of that median.
    Intervals come out about a third as wide as the paired rounds' on this noisy machine (each
    ratio compares calls a few milliseconds apart rather than 20 ms runs). Then embag on tensors
    and torch's F.embedding_bag taking turns the same way: a model alternating torch's operations
    and embag's calls, where each call finds what the other left (on 2 threads, torch's OpenMP
    threads spinning on the second core after its call: the README's "torch's OpenMP threads")."""
    weight, sets = workload(1_000_000, 128, 2048, pooling, dist)
    tw = torch.from_numpy(weight)
    tsets = [(torch.from_numpy(i), torch.from_numpy(o)) for i, o in sets]
    out = np.empty((2048, 128), np.float32)
    n = len(sets)
    def turns(variants):
        """{name: seconds of each call}, the variants in rotating turns, each call on the next set."""
        for run in variants.values():  # past the prefetch trials
            for i in range(96):
                run(i)
        names = list(variants)
        seconds = {name: [] for name in names}
        next_set = 0
        for c in range(calls):
            for variant in names[c % len(names):] + names[:c % len(names)]:
                seconds[variant].append(variants[variant](next_set))
                next_set += 1
        return seconds

    def ratio(label, seconds, top, bottom):
        # rank bounds of the median's 95% interval (normal approximation of binomial(calls, 1/2))
        low, high = int(calls / 2 - 0.98 * calls ** 0.5), int(calls / 2 + 0.98 * calls ** 0.5)
        ratios = sorted(a / b for a, b in zip(seconds[top], seconds[bottom]))
        print(f"  {label:20s} median {ratios[calls // 2]:.4f}, 95% interval of the median "
              f"[{ratios[low]:.4f}, {ratios[high]:.4f}]")

    embag.set_num_threads(threads)
    torch.set_num_threads(threads)
    seconds = turns({
        "C++": lambda i: _embag._time_forward(weight, [sets[i % n]], "sum", out, 1),
        "NumPy": alone(lambda i: embag.embedding_bag(sets[i % n][0], weight, sets[i % n][1], mode="sum")),
        "tensors": alone(lambda i: embag.embedding_bag(tsets[i % n][0], tw, tsets[i % n][1], mode="sum")),
    })
    print(f"single calls, {name}: R = 1M, D = 128, B = 2048, L = {pooling}, {dist}, forward sum, {threads} "
          f"thread{'s' if threads > 1 else ''}; {calls} calls per variant, the library's median "
          f"{sorted(seconds['C++'])[calls // 2] * 1e3:.3f} ms")
    ratio("NumPy / C++", seconds, "NumPy", "C++")
    ratio("tensors / C++", seconds, "tensors", "C++")
    seconds = turns({
        "tensors": alone(lambda i: embag.embedding_bag(tsets[i % n][0], tw, tsets[i % n][1], mode="sum")),
        "torch": alone(lambda i: F.embedding_bag(tsets[i % n][0], tw, tsets[i % n][1], mode="sum")),
    })
    ratio("torch / tensors", seconds, "torch", "tensors")
    print()


def report(label, best):
    """A row: ms per call of each variant timed, NumPy's time over C++'s, torch's over embag's on
    NumPy arrays and on tensors (what a torch model swapping embag in gets)."""
    cells = [f"{best[k] * 1e3:8.3f}" if k in best else " " * 8 for k in ("C++", "NumPy", "tensors", "torch")]
    python_over_cpp = f"{best['NumPy'] / best['C++']:7.3f}" if "C++" in best else " " * 7
    ratios = [f"{best['torch'] / best[k]:10.2f}x" if "torch" in best and k in best else " " * 11 for k in ("NumPy", "tensors")]
    print(f"  {label:16s} {' '.join(cells)}  {python_over_cpp} {' '.join(ratios)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats (a smoke run)")
    parser.add_argument("--threads", default="1,2", help="thread counts of the large calls (default 1,2)")
    parser.add_argument("--parts", default="overhead,default,L1,zipf",
                        help="what to time, of overhead (the small call), default, L1 and zipf (the large "
                             "workloads), parity (the large call's Python/C++ ratio in paired rounds) and calls "
                             "(the same ratio call by call); default: all but parity and calls")
    args = parser.parse_args()
    parts = args.parts.split(",")
    workloads = {"default": ("default", 40, "uniform"), "L1": ("L = 1", 1, "uniform"), "zipf": ("Zipf", 40, "zipf")}
    unknown = set(parts) - set(workloads) - {"overhead", "parity", "calls"}
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}")
    calls, repeats = (5, 2) if args.quick else (50, 5)
    print(f"embag {embag.__version__} ({embag.active_isa()}), torch {torch.__version__}, "
          f"{len(os.sched_getaffinity(0))} CPUs\n")
    if "overhead" in parts:
        overhead(2 if args.quick else 5)
    if "parity" in parts:
        for threads in (int(t) for t in args.threads.split(",")):
            for name, pooling, dist in workloads.values():
                parity(name, pooling, dist, threads, rounds=21 if args.quick else 101)
    if "calls" in parts:
        for threads in (int(t) for t in args.threads.split(",")):
            for name, pooling, dist in workloads.values():
                single_calls(name, pooling, dist, threads, calls=60 if args.quick else 600)
    for threads in (int(t) for t in args.threads.split(",")):
        embag.set_num_threads(threads)
        torch.set_num_threads(threads)
        for part in (p for p in workloads if p in parts):
            name, pooling, dist = workloads[part]
            large(name, 1_000_000, 128, 2048, pooling, dist, threads, calls, repeats)


if __name__ == "__main__":
    main()
