#!/usr/bin/python3
"""A training step of an embedding table: embag's fused optimizers against PyTorch's sparse ones,
in one process, on the same threads (embag.set_num_threads and torch.set_num_threads alike).

The workload is embag bench's default: R = 1M rows, D = 128, B = 2048 bags of L = 40 indices
(8 index sets taken in turn), uniform or Zipf (s = 1.05) ids, mode sum, on 1 and 2 threads.

1. The step the user sees, forward + backward + update:
   embag   embag.nn.EmbeddingBag with embag.optim.SGD / Adagrad / RowwiseAdagrad attached: forward,
           then backward, which updates the weight (embag.backward_update).
   torch   torch.nn.EmbeddingBag(sparse=True): zero_grad, forward, backward (a sparse COO gradient),
           then torch.optim.SGD / Adagrad / SparseAdam's step.
2. The fused step alone, backward + update, given the forward:
   embag   embag.backward_update on the same arrays.
   torch   aten._embedding_bag_backward(sparse=True) (what autograd runs for the module's
           backward; the forward's bookkeeping made beforehand), then the optimizer's step.

Ratios are embag's time over torch's (below 1: embag faster; the issue's target is 0.33, embag
3x faster). embag has no Adam: its Adagrad is set against SparseAdam as the nearest step of the
same work. Each figure is the best of 5 runs of a loop of calls (about 0.3 s each), after 8
warm-up calls, the variants interleaved per run. All variants of a workload train one shared
table (lr 1e-4: it barely moves); each optimizer has its own state.
Run from the repository root after building: /usr/bin/python3 bench/python_optim_bench.py [--quick]"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python_bench import best_time, loop, workload  # noqa: E402  (puts build/python on sys.path)
import torch  # noqa: E402

import embag  # noqa: E402
import embag.nn  # noqa: E402
import embag.optim  # noqa: E402

LR = 1e-4
PAIRS = (("SGD", "SGD", "SGD"), ("Adagrad", "Adagrad", "Adagrad"), ("RowwiseAdagrad", "RowwiseAdagrad", "Adagrad"),
         ("Adagrad", "Adagrad", "SparseAdam"))  # (row label, embag's optimizer, torch's)


def torch_optimizer(name, parameters):
    return {"SGD": lambda: torch.optim.SGD(parameters, lr=LR),
            "Adagrad": lambda: torch.optim.Adagrad(parameters, lr=LR),
            "SparseAdam": lambda: torch.optim.SparseAdam(parameters, lr=LR)}[name]()


def run_workload(dist, threads, calls, repeats, rows=1_000_000, dim=128, bags=2048, pooling=40):
    weight, sets = workload(rows, dim, bags, pooling, dist)
    table = torch.from_numpy(weight)
    tsets = [(torch.from_numpy(i), torch.from_numpy(o)) for i, o in sets]
    grad_output = torch.randn(bags, dim, generator=torch.Generator().manual_seed(7))
    n = len(tsets)

    # 1. forward + backward + update
    ours, theirs, variants = {}, {}, {}
    for name in ("SGD", "Adagrad", "RowwiseAdagrad"):
        module = embag.nn.EmbeddingBag.from_pretrained(table, freeze=False, mode="sum")  # shares `table`
        ours[name] = (module, getattr(embag.optim, name)(module, lr=LR))
    for name in ("SGD", "Adagrad", "SparseAdam"):
        module = torch.nn.EmbeddingBag.from_pretrained(table, freeze=False, mode="sum", sparse=True)
        theirs[name] = (module, torch_optimizer(name, module.parameters()))

    def embag_step(name):
        module, _ = ours[name]
        return loop(lambda i: module(*tsets[i % n]).backward(grad_output))

    def torch_step(name):
        module, optimizer = theirs[name]

        def run(i):
            optimizer.zero_grad(set_to_none=True)
            module(*tsets[i % n]).backward(grad_output)
            optimizer.step()
        return loop(run)

    for name in ours:
        variants["embag " + name] = embag_step(name)
    for name in theirs:
        variants["torch " + name] = torch_step(name)
    whole = best_time(variants, calls, repeats, run_seconds=0.3)

    # 2. backward + update alone
    states = {"SGD": None, "Adagrad": torch.zeros(rows, dim), "RowwiseAdagrad": torch.zeros(rows)}
    kinds = {"SGD": "sgd", "Adagrad": "adagrad", "RowwiseAdagrad": "rowwise_adagrad"}
    bookkeeping = []
    for indices, offsets in tsets:
        _, offset2bag, bag_size, maximum = torch.ops.aten._embedding_bag(table, indices, offsets, False, 0)
        bookkeeping.append((indices, offsets, offset2bag, bag_size, maximum))
    parameter = torch.nn.Parameter(table)
    alone_optimizers = {name: torch_optimizer(name, [parameter]) for name in ("SGD", "Adagrad", "SparseAdam")}

    def embag_fused(name):
        return loop(lambda i: embag.backward_update(grad_output, tsets[i % n][0], table, tsets[i % n][1], mode="sum",
                                                    optimizer=kinds[name], lr=LR, state=states[name]))

    def torch_fused(name):
        optimizer = alone_optimizers[name]

        def run(i):
            indices, offsets, offset2bag, bag_size, maximum = bookkeeping[i % n]
            parameter.grad = torch.ops.aten._embedding_bag_backward(grad_output, indices, offsets, offset2bag,
                                                                    bag_size, maximum, rows, False, 0, True, None, -1)
            optimizer.step()
        return loop(run)

    variants = {"embag " + name: embag_fused(name) for name in states}
    variants.update({"torch " + name: torch_fused(name) for name in alone_optimizers})
    alone = best_time(variants, calls, repeats, run_seconds=0.3)

    print(f"{dist}: R = {rows}, D = {dim}, B = {bags}, L = {pooling}, {threads} thread(s) "
          f"(ms per step; ratio embag / torch, target <= 0.33)")
    print(f"  {'embag vs torch':32s} {'fwd+bwd+update':>28s}   {'bwd+update alone':>28s}")
    for label, mine, other in PAIRS:
        cells = []
        for best in (whole, alone):
            e, t = best["embag " + mine], best["torch " + other]
            cells.append(f"{e * 1e3:8.2f} {t * 1e3:8.2f} {e / t:8.3f}x")
        print(f"  {label + ' vs ' + other:32s} {cells[0]:>28s}   {cells[1]:>28s}")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats (a smoke run)")
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--dist", default="uniform,zipf", help="id distributions (default uniform,zipf)")
    args = parser.parse_args()
    calls, repeats = (4, 2) if args.quick else (50, 5)
    print(f"embag {embag.__version__} ({embag.active_isa()}), torch {torch.__version__}, "
          f"{len(os.sched_getaffinity(0))} CPUs\n")
    for threads in (int(t) for t in args.threads.split(",")):
        embag.set_num_threads(threads)
        torch.set_num_threads(threads)
        for dist in args.dist.split(","):
            run_workload(dist, threads, calls, repeats)


if __name__ == "__main__":
    main()
