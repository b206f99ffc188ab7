"""embag: SIMD embedding bags on the CPU, on NumPy arrays and CPU PyTorch tensors.

The functions take torch.nn.functional's signatures (input first, mode='mean' by default) and work
in place on the caller's memory: tables, indices, offsets and weights are read where they are (a
strided or otherwise unreadable array is an embag.UnsupportedArray error, never a silent copy), and
outputs are new arrays of the caller's type (torch.Tensor when the weight or input is one, else
numpy.ndarray). Every call releases the GIL while it computes.

backward_update and apply_sparse_gradient train a table in place (embag/optim.hpp): SGD, Adagrad
and rowwise Adagrad fused with backward, on float32, float16 and bfloat16 tables.

Importing embag needs NumPy only; embag.nn (the torch.nn modules) and embag.optim (their fused
optimizers) need torch.
"""
import numpy as np

from ._embag import (Error, FileError, IndexOutOfRange, InvalidArgument, OutOfMemory, Table, UnsupportedArray,
                     UpdateSummary, __version__, active_isa, available_isas, embedding_bag, embedding_bag_forward,
                     force_isa, get_num_threads)
# (offsets, fixed bag length, number of bags) of torch's two forms of bags, a 1-D input with offsets
# or a 2-D input of B bags of L indices: the rule embedding_bag applies, for the other functions
from ._embag import bag_layout as _bags
from . import _embag

__all__ = ["embedding_bag", "embedding", "embedding_bag_forward", "embedding_bag_backward", "embedding_backward",
           "per_sample_weights_grad", "embedding_bags", "backward_update", "apply_sparse_gradient", "UpdateSummary",
           "quantize", "Table", "available_isas", "active_isa",
           "force_isa", "set_num_threads", "get_num_threads", "set_buffer_cache_limit", "buffer_cache_bytes", "Error", "IndexOutOfRange", "InvalidArgument",
           "FileError", "OutOfMemory", "UnsupportedArray"]


_torch_ext = None  # embag._torch_nn once loaded (_load_torch_nn); False: embag was built without it
_buffer_cache_limit = None  # the last set_buffer_cache_limit, for embag._torch_nn when it loads
# set_num_threads' setting (0: every thread TBB gives the caller), which embag._torch_nn's calls
# take as an argument: read here, where asking embag._embag cost a call into it (about 10 us of a
# call that follows a large one, whose caches it found empty)
_max_threads = 0


def set_num_threads(threads):
    """The most threads each call uses (0, the default: every thread TBB gives the caller)."""
    global _max_threads
    _embag.set_num_threads(threads)  # refuses a negative count
    _max_threads = threads


def _load_torch_nn():
    """embag._torch_nn (torch tensors read as at::Tensors, embag.nn.EmbeddingBag's C++ autograd node),
    or None where embag was built without torch's C++ headers. Only once torch is imported."""
    global _torch_ext
    if _torch_ext is None:
        try:
            from . import _torch_nn as module
            if _buffer_cache_limit is not None:
                module.set_buffer_cache_limit(_buffer_cache_limit)
        except ImportError:
            module = False
        _torch_ext = module
    return _torch_ext or None


def set_buffer_cache_limit(bytes):
    """Bounds the memory of released outputs (forward outputs, sparse gradients) kept for the next
    calls' outputs, which then need no fresh pages; drops what is kept over it; returns the previous
    limit (default 256 MiB; 0 keeps nothing). The limit holds for each extension module's memory:
    embag._embag's, and embag._torch_nn's (tensor outputs read through it, embag.nn's gradients)."""
    global _buffer_cache_limit
    previous = _embag.set_buffer_cache_limit(bytes)
    _buffer_cache_limit = bytes
    if _torch_ext:
        _torch_ext.set_buffer_cache_limit(bytes)
    return previous


def buffer_cache_bytes():
    """Bytes of released outputs kept for the next calls (see set_buffer_cache_limit)."""
    return _embag.buffer_cache_bytes() + (_torch_ext.buffer_cache_bytes() if _torch_ext else 0)


def _empty(shape, dtype, *like):
    """A new array for an output, a torch.Tensor when one of like is (the caller's array type), in
    memory the extension keeps for outputs (see set_buffer_cache_limit)."""
    return _embag.empty(shape, dtype, like)


def _zeros(shape, dtype, *like):
    """A new array of zeros, a torch.Tensor when one of like is; a large one (a dense gradient) in
    fresh zero pages, zeroed by the kernel as its rows are first written (zeroed_memory.hpp)."""
    return _embag.zeros(shape, dtype, like)


def _invalid(code, message):
    error = InvalidArgument(message)
    error.code = code
    return error


def _not_an_array(array, what, function):
    """The error for an argument without a shape (array.shape: a tuple, or a torch.Size)."""
    error = UnsupportedArray(f"{function}: {what} must be a NumPy array or a CPU torch.Tensor (anything with "
                             f"the buffer protocol or DLPack), got {type(array).__name__}")
    error.code = "unsupported_array"
    return error


def _dim(weight, function):
    if isinstance(weight, Table):
        return weight.dim
    try:
        shape = weight.shape
    except AttributeError:
        raise _not_an_array(weight, "weight", function) from None
    if len(shape) != 2:
        raise _invalid("invalid_shape", f"{function}: weight must be 2-D (rows x dim), got shape {tuple(shape)}")
    return shape[1]


def _flat_lookup(input):
    """A plain lookup as the library's mode 'none': one bag holding every index, one output row per
    index (an empty input: zero bags of length 1)."""
    count = 1
    for extent in input.shape:
        count *= extent
    return count, max(count, 1)


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False):
    """torch.nn.functional.embedding: weight's rows at input's indices (any shape; output shape
    input.shape + (dim,)). As in torch, padding_idx only keeps the gradient from that row: forward
    returns the row as it is."""
    dim = _dim(weight, "embedding")
    count, length = _flat_lookup(input)
    out = _embag.forward(weight, input, None, length, None, "none", None, False, max_norm, norm_type, count, False)
    return out.reshape(tuple(input.shape) + (dim,))


def embedding_bag_backward(grad_output, input, num_weights, offsets=None, mode="mean", per_sample_weights=None,
                           include_last_offset=False, padding_idx=None, scale_grad_by_freq=False, max_indices=None,
                           sparse=False, grad_weight=None):
    """The gradient of embedding_bag with respect to weight, dW = A^T . grad_output.

    Dense (sparse=False): a num_weights x D float32 array, or added into grad_weight when given.
    Sparse: (rows, values), the sorted unique rows the call references (int64) and their gradient
    rows (len(rows) x D). Mode 'max' needs the max_indices embedding_bag_forward returned."""
    offsets, length, _ = _bags(input, offsets, per_sample_weights, include_last_offset, "embedding_bag_backward")
    return _bag_backward(grad_output, input, num_weights, offsets, length, mode, per_sample_weights,
                         include_last_offset, padding_idx, scale_grad_by_freq, max_indices, sparse, grad_weight)


def _bag_backward(grad_output, input, num_weights, offsets, length, mode, per_sample_weights, include_last_offset,
                  padding_idx, scale_grad_by_freq, max_indices, sparse, grad_weight=None):
    """embedding_bag_backward on bags whose layout _bags has read: (offsets, fixed length) as it
    returns them (embag.nn's backward keeps them from its forward)."""
    if sparse:  # tensors when grad_output or input is one
        return _embag.backward_sparse(num_weights, input, offsets, length, per_sample_weights, mode, padding_idx,
                                      include_last_offset, scale_grad_by_freq, grad_output, max_indices)
    if grad_weight is None:
        grad_weight = _zeros((num_weights, grad_output.shape[1]), "float32", grad_output, input)
    _embag.backward_dense(input, offsets, length, per_sample_weights, mode, padding_idx, include_last_offset,
                          scale_grad_by_freq, grad_output, grad_weight, max_indices)
    return grad_weight


def embedding_backward(grad_output, input, num_weights, padding_idx=None, scale_grad_by_freq=False, sparse=False,
                       grad_weight=None):
    """The gradient of embedding with respect to weight (grad_output: input.shape + (D,)); no
    gradient reaches padding_idx. Dense or sparse as embedding_bag_backward."""
    count, length = _flat_lookup(input)
    flat_grad = grad_output.reshape((count, grad_output.shape[-1]))
    if sparse:
        return _embag.backward_sparse(num_weights, input, None, length, None, "none", padding_idx, False,
                                      scale_grad_by_freq, flat_grad, None)
    if grad_weight is None:
        grad_weight = _zeros((num_weights, grad_output.shape[-1]), "float32", grad_output, input)
    _embag.backward_dense(input, None, length, None, "none", padding_idx, False, scale_grad_by_freq, flat_grad,
                          grad_weight, None)
    return grad_weight


def per_sample_weights_grad(grad_output, weight, input, per_sample_weights, offsets=None, mode="sum",
                            include_last_offset=False, padding_idx=None):
    """The gradient of embedding_bag with respect to per_sample_weights (input's shape, float32):
    for 'sum', <grad_output[bag(j)], weight[input[j]]>; 0 for padding entries."""
    offsets, length, _ = _bags(input, offsets, per_sample_weights, include_last_offset, "per_sample_weights_grad")
    grad = _empty(tuple(input.shape), "float32", grad_output, input)
    _embag.per_sample_weights_grad(weight, input, offsets, length, per_sample_weights, mode, padding_idx,
                                   include_last_offset, grad_output, grad.reshape(-1))
    return grad


def _seed(seed, function):
    if not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise _invalid("invalid_option", f"{function}: seed = {seed!r} must be an int in [0, 2**64)")
    return seed


def backward_update(grad_output, input, weight, offsets=None, mode="mean", per_sample_weights=None,
                    include_last_offset=False, padding_idx=None, scale_grad_by_freq=False, max_indices=None, *,
                    optimizer, lr, state=None, eps=1e-10, weight_decay=0.0, rounding="nearest", seed=0, dtype=None):
    """Backward and an optimizer's step in one pass, in place (embag/optim.hpp): each row of weight
    the bags touch gets its gradient (embedding_bag_backward's sparse rows, every mode; max needs
    max_indices) and at once the update, with no gradient array in between. Returns an
    embag.UpdateSummary (rows updated; rows left as they were because their update was not finite).

    optimizer: 'sgd' (w -= lr g), 'adagrad' (s += g g; w -= lr g / (sqrt(s) + eps)) or
    'rowwise_adagrad' (one s per row, += mean(g g)). weight_decay adds weight_decay * w to g, on
    the touched rows only. state: float32, the table's shape for adagrad, one value per row (rows,
    or rows x 1) for rowwise_adagrad, None for sgd; updated in place (start it at torch's
    initial_accumulator_value). weight: float32, or 16-bit (torch.float16 / torch.bfloat16
    tensors, numpy.float16, or a uint16 array with dtype='bf16' or 'f16'), each updated value
    rounded to nearest or, with rounding='stochastic', up or down at random from a hash of (seed,
    row, column): give each step its own seed. Everything is checked before anything is written."""
    offsets, length, _ = _bags(input, offsets, per_sample_weights, include_last_offset, "backward_update")
    return _embag.backward_update(weight, dtype, input, offsets, length, per_sample_weights, mode, padding_idx,
                                  include_last_offset, scale_grad_by_freq, grad_output, max_indices, optimizer, lr,
                                  eps, weight_decay, rounding, _seed(seed, "backward_update"), state)


def apply_sparse_gradient(weight, rows, values, *, optimizer, lr, state=None, eps=1e-10, weight_decay=0.0,
                          rounding="nearest", seed=0, dtype=None):
    """The optimizer's step from a gradient already in sparse form: rows (int64, ascending, unique)
    and their gradient rows values (len(rows) x dim float32), as embedding_bag_backward(...,
    sparse=True) returns them or as summed across processes. Arguments and result as
    backward_update's."""
    return _embag.apply_sparse_gradient(weight, dtype, rows, values, optimizer, lr, eps, weight_decay, rounding,
                                        _seed(seed, "apply_sparse_gradient"), state)


def embedding_bags(lookups):
    """Many tables in one call (embag/batched.hpp): lookups is a sequence of dicts with embedding_bag's
    keywords (input, weight, offsets, mode='mean', per_sample_weights, include_last_offset,
    padding_idx). Every table is checked before anything is computed; returns one output per table,
    each what its own embedding_bag returns."""
    calls, outs = [], []
    for t, lookup in enumerate(lookups):
        unknown = set(lookup) - {"input", "weight", "offsets", "mode", "per_sample_weights", "include_last_offset",
                                 "padding_idx"}
        if unknown:
            raise _invalid("invalid_option", f"embedding_bags: lookups[{t}] has unknown keys {sorted(unknown)}")
        input, weight = lookup["input"], lookup["weight"]
        per_sample_weights = lookup.get("per_sample_weights")
        include_last_offset = lookup.get("include_last_offset", False)
        offsets, length, bags = _bags(input, lookup.get("offsets"), per_sample_weights, include_last_offset,
                                      f"embedding_bags: lookups[{t}]")
        outs.append(_empty((bags, _dim(weight, f"embedding_bags: lookups[{t}]")), "float32", weight, input))
        calls.append((weight, input, offsets, length, per_sample_weights, lookup.get("mode", "mean"),
                      lookup.get("padding_idx"), include_last_offset))
    _embag.forward_batched(calls, outs)
    return outs


def quantize(weight, dtype):
    """A compressed copy of a float32 table: dtype 'f16', 'bf16', 'int8_rowwise' or 'int4_rowwise'
    (also 'fp16', 'int8', 'int4'); an embag.Table that embedding_bag reads like an array."""
    return _embag.quantize(weight, dtype)


def _dequantize(self):
    """The table's rows as float32 (rows x dim numpy.ndarray), as forward reads them."""
    out = np.empty(self.shape, np.float32)
    self._dequantize_into(out)
    return out


Table.dequantize = _dequantize
