"""Plain NumPy loops of the semantics the README states (torch's nn.EmbeddingBag), in float64: the
independent oracle the Python tests compare embag's results with."""
import numpy as np


def bag_bounds(input, offsets, include_last_offset):
    """Each bag's [start, end) into input.reshape(-1)."""
    if input.ndim == 2:
        bags, length = input.shape
        return [(b * length, (b + 1) * length) for b in range(bags)]
    starts = [int(o) for o in offsets]
    if include_last_offset:
        return list(zip(starts[:-1], starts[1:]))
    return list(zip(starts, starts[1:] + [input.size]))


def _padding(padding_idx, rows):
    if padding_idx is None:
        return None
    return padding_idx + rows if padding_idx < 0 else padding_idx


def embedding_bag(input, weight, offsets=None, mode="mean", per_sample_weights=None, include_last_offset=False,
                  padding_idx=None):
    flat = input.reshape(-1)
    weights = None if per_sample_weights is None else per_sample_weights.reshape(-1).astype(np.float64)
    table = weight.astype(np.float64)
    pad = _padding(padding_idx, table.shape[0])
    bounds = bag_bounds(input, offsets, include_last_offset)
    out = np.zeros((len(bounds), table.shape[1]))
    for b, (start, end) in enumerate(bounds):
        used = [j for j in range(start, end) if flat[j] != pad]
        if not used:
            continue
        w = np.array([1.0 if weights is None else weights[j] for j in used])
        rows = table[[flat[j] for j in used]]
        if mode == "max":
            out[b] = rows.max(axis=0)
            continue
        total = (w[:, None] * rows).sum(axis=0)
        if mode == "sum":
            out[b] = total
        elif mode == "mean":
            out[b] = total / w.sum() if w.sum() != 0 else 0
        elif mode == "sqrtn":
            norm = np.sqrt((w * w).sum())
            out[b] = total / norm if norm != 0 else 0
    return out


def embedding_bag_grad(grad_output, input, rows, offsets=None, mode="mean", per_sample_weights=None,
                       include_last_offset=False, padding_idx=None, weight=None):
    """dW: every non-padding index j of bag b receives its share of grad_output[b] (for max, the
    rows each maximum came from, found from weight)."""
    flat = input.reshape(-1)
    weights = None if per_sample_weights is None else per_sample_weights.reshape(-1).astype(np.float64)
    pad = _padding(padding_idx, rows)
    grad = np.zeros((rows, grad_output.shape[1]))
    for b, (start, end) in enumerate(bag_bounds(input, offsets, include_last_offset)):
        used = [j for j in range(start, end) if flat[j] != pad]
        if not used:
            continue
        w = np.array([1.0 if weights is None else weights[j] for j in used])
        if mode == "max":
            values = weight[[flat[j] for j in used]]
            first_max = values.argmax(axis=0)  # ties go to the first occurrence
            for d, k in enumerate(first_max):
                grad[flat[used[k]], d] += grad_output[b, d]
            continue
        scale = {"sum": 1.0, "mean": 1.0 / w.sum() if w.sum() != 0 else 0.0}[mode]
        for k, j in enumerate(used):
            grad[flat[j]] += w[k] * scale * grad_output[b]
    return grad


def per_sample_weights_grad(grad_output, weight, input, offsets=None, include_last_offset=False, padding_idx=None):
    """Mode sum: <grad_output[bag(j)], weight[input[j]]>, 0 for padding entries."""
    flat = input.reshape(-1)
    pad = _padding(padding_idx, weight.shape[0])
    grad = np.zeros(flat.size)
    for b, (start, end) in enumerate(bag_bounds(input, offsets, include_last_offset)):
        for j in range(start, end):
            if flat[j] != pad:
                grad[j] = np.dot(grad_output[b].astype(np.float64), weight[flat[j]].astype(np.float64))
    return grad.reshape(input.shape)
