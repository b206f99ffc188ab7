"""embag.nn: torch.nn.EmbeddingBag and torch.nn.Embedding computed by embag.

Each is a subclass of torch's module with its constructor, from_pretrained, parameters, state_dict
and repr unchanged; only forward differs, running embag's forward and embag's backward: a dense or
sparse weight gradient per `sparse=`, the per-sample-weights gradient, and max through the argmax
forward records. Swapping one into a model is one line: `torch.nn.EmbeddingBag(...)` ->
`embag.nn.EmbeddingBag(...)`. EmbeddingBag runs as a C++ autograd node (embag._torch_nn, built
where torch's C++ headers are: Debian's libtorch-dev), Embedding through a torch.autograd.Function.

A module an embag.optim optimizer trains (its `fused_optimizer`) gets no weight gradient: its
backward updates the weight in place (embag.backward_update), as TorchRec's fused optimizers do.
Such a weight may be float16 or bfloat16.
"""
import torch

import embag

_torch_nn = embag._load_torch_nn()  # None where embag was built without torch's C++ headers

__all__ = ["EmbeddingBag", "Embedding"]


def _sparse_gradient(rows, values, shape):
    """The sparse gradient of embag's (rows, values). The rows come from the library sorted, unique
    and within the table, so the tensor is made without torch.sparse_coo_tensor's checks (a pass
    over every index; 6.9 against 2.7 us for one row on torch 1.13, a part of each small training
    step). torch's private constructor: what its own sparse embedding backward uses. (Not marked
    coalesced: torch 1.13's AccumulateGrad rebuilds the gradient it keeps with this same
    constructor, which drops the mark.)"""
    return torch._sparse_coo_tensor_unsafe(rows.unsqueeze(0), values, shape)


def _float32_cpu(tensor, what):
    if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
        raise embag.UnsupportedArray(f"embag.nn: {what} must be a float32 CPU tensor, got {tensor.dtype} on "
                                     f"{tensor.device}")


def _trainable_weight(module, weight):
    """module's weight: a float32 CPU weight, or a 16-bit one that gets no gradient: trained by a
    fused optimizer (which updates it in 16 bits) or frozen. torch has no 16-bit gradient embag could
    give it. The modules' forward check the common case (a float32 CPU weight) before calling this."""
    if weight.dtype in (torch.float16, torch.bfloat16) and weight.device.type == "cpu":
        if module.fused_optimizer is not None or not weight.requires_grad:
            return
        raise embag.UnsupportedArray(f"embag.nn: a {weight.dtype} weight trains only with an embag.optim optimizer "
                                     f"(or is frozen): embag's gradients are float32")
    _float32_cpu(weight, "weight")


class _EmbeddingBagFunction(torch.autograd.Function):
    """EmbeddingBag where the C++ node does not run it: the weight of an embag.optim optimizer,
    whose backward updates it in place (no weight gradient), or a frozen 16-bit weight. The
    module's options come as the module itself, read once in forward."""

    @staticmethod
    def forward(ctx, weight, input, offsets, per_sample_weights, module):
        mode, padding_idx, include_last_offset = module.mode, module.padding_idx, module.include_last_offset
        bag_offsets, length, bags = embag._bags(input, offsets, per_sample_weights, include_last_offset,
                                                "embedding_bag")
        output = embag._embag.forward(weight, input, bag_offsets, length, per_sample_weights, mode, padding_idx,
                                      include_last_offset, module.max_norm, module.norm_type, bags, mode == "max")
        output, max_indices = output if mode == "max" else (output, None)
        ctx.save_for_backward(weight, input, offsets, per_sample_weights, max_indices)
        ctx.options = (mode, padding_idx, include_last_offset, module.scale_grad_by_freq, module.fused_optimizer)
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        weight, input, offsets, per_sample_weights, max_indices = ctx.saved_tensors
        mode, padding_idx, include_last_offset, scale_grad_by_freq, fused_optimizer = ctx.options
        # autograd may hand an expanded (stride 0) gradient, as sum() does: the library reads rows
        # in place, so make it contiguous here (B x D, the size of the output, never the table)
        grad_output = grad_output.contiguous()
        grad_per_sample_weights = None
        # before the update: the weights' gradient reads the rows forward read
        if ctx.needs_input_grad[3]:
            grad_per_sample_weights = embag.per_sample_weights_grad(grad_output, weight.detach(), input,
                                                                    per_sample_weights, offsets, mode,
                                                                    include_last_offset, padding_idx)
        if ctx.needs_input_grad[0]:  # the weight updated in place, no gradient
            fused_optimizer._update(weight, grad_output, input, offsets=offsets, mode=mode,
                                    per_sample_weights=per_sample_weights, include_last_offset=include_last_offset,
                                    padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq,
                                    max_indices=max_indices)
        return None, None, None, grad_per_sample_weights, None


class _EmbeddingFunction(torch.autograd.Function):
    """Embedding where the C++ node does not run it: the weight of an embag.optim optimizer, a frozen
    16-bit weight, or every weight where embag was built without embag._torch_nn."""

    @staticmethod
    def forward(ctx, weight, input, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, fused_optimizer):
        output = embag.embedding(input, weight.detach(), padding_idx, max_norm, norm_type)
        ctx.save_for_backward(input, weight)
        ctx.options = (weight.shape[0], padding_idx, scale_grad_by_freq, sparse)
        ctx.fused_optimizer = fused_optimizer
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        rows, padding_idx, scale_grad_by_freq, sparse = ctx.options
        grad_output = grad_output.contiguous()  # as for EmbeddingBag: the size of the output
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None, None
        if ctx.fused_optimizer is not None:
            # a lookup is mode 'none': one bag of every index (a 2-D input of one row), one output
            # row per index
            ctx.fused_optimizer._update(weight, grad_output.reshape(-1, grad_output.shape[-1]), input.reshape(1, -1),
                                        mode="none", padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq)
            return None, None, None, None, None, None, None, None
        shape = (rows, grad_output.shape[-1])
        if sparse and padding_idx is None and not scale_grad_by_freq and isinstance(input, torch.Tensor):
            # torch's own form: one row per index, the input as it is (uncoalesced: a row may
            # repeat), the values grad_output's rows. Coalescing (embag's sorted unique rows) would
            # sort without summing anything but repeats, and took longer than the rest of the
            # gradient on 2,048 indices (R = 1M, D = 128).
            values = grad_output.reshape(-1, shape[1])  # a view, as torch's Embedding gives
            return (torch._sparse_coo_tensor_unsafe(input.reshape(1, -1).long(), values, shape), None, None, None, None,
                    None, None, None)
        grad = embag.embedding_backward(grad_output, input, rows, padding_idx, scale_grad_by_freq, sparse)
        if sparse:
            grad = _sparse_gradient(grad[0], grad[1], shape)
        return grad, None, None, None, None, None, None, None


class EmbeddingBag(torch.nn.EmbeddingBag):
    """torch.nn.EmbeddingBag (same arguments, parameters and from_pretrained), computed by embag."""

    fused_optimizer = None  # the embag.optim optimizer that updates the weight in backward, if any

    def forward(self, input, offsets=None, per_sample_weights=None):
        weight = self.weight  # a parameter: each read goes through torch.nn.Module.__getattr__
        if weight.dtype is not torch.float32 or not weight.is_cpu:
            _trainable_weight(self, weight)
        elif self.fused_optimizer is None:
            if _torch_nn is None:
                raise ImportError("embag.nn.EmbeddingBag's gradients need embag._torch_nn, built where torch's C++ "
                                  "headers are (Debian: libtorch-dev, then rebuild embag); without it the module "
                                  "trains only through an embag.optim optimizer")
            include_last_offset = self.include_last_offset
            bag_offsets, length, bags = embag._bags(input, offsets, per_sample_weights, include_last_offset,
                                                    "embedding_bag")
            try:
                return _torch_nn.embedding_bag(weight, input, bag_offsets, per_sample_weights, length, bags, self.mode,
                                               self.padding_idx, include_last_offset, self.max_norm, self.norm_type,
                                               self.scale_grad_by_freq, self.sparse, embag._max_threads)
            except TypeError:  # pybind11's list of signatures, where an argument is no tensor
                _tensors_only("EmbeddingBag", input=input, offsets=offsets, per_sample_weights=per_sample_weights)
                raise
        _tensors_only("EmbeddingBag", input=input, offsets=offsets, per_sample_weights=per_sample_weights)
        return _EmbeddingBagFunction.apply(weight, input, offsets, per_sample_weights, self)


def _tensors_only(module, **arrays):
    """A module's arrays are tensors (or None), as torch's modules take them; names the first that is not."""
    for name, array in arrays.items():
        if array is not None and not isinstance(array, torch.Tensor):
            raise TypeError(f"embag.nn.{module}: {name} must be a torch.Tensor, as torch.nn.{module}'s is, not "
                            f"{type(array).__module__}.{type(array).__qualname__} (the functions of embag take "
                            f"NumPy arrays)")


class Embedding(torch.nn.Embedding):
    """torch.nn.Embedding (same arguments, parameters and from_pretrained), computed by embag."""

    fused_optimizer = None  # as EmbeddingBag's

    def forward(self, input):
        weight = self.weight
        if not isinstance(input, torch.Tensor):
            _tensors_only("Embedding", input=input)
        if weight.dtype is not torch.float32 or not weight.is_cpu:
            _trainable_weight(self, weight)
        elif self.fused_optimizer is None and _torch_nn is not None:
            # the C++ node, as EmbeddingBag's: a lookup is mode 'none', each index a bag of its own
            count = input.numel()
            output = _torch_nn.embedding_bag(weight, input, None, None, 1, count, "none", self.padding_idx, False,
                                             self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse,
                                             embag._max_threads)
            return output  # of input's shape and dim
        return _EmbeddingFunction.apply(weight, input, self.padding_idx, self.max_norm, self.norm_type,
                                        self.scale_grad_by_freq, self.sparse, self.fused_optimizer)
