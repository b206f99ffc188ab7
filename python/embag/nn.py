"""embag.nn: torch.nn.EmbeddingBag and torch.nn.Embedding computed by embag.

Each is a subclass of torch's module with its constructor, from_pretrained, parameters, state_dict
and repr unchanged; only forward differs, running embag's forward and, through a
torch.autograd.Function, embag's backward: a dense or sparse weight gradient per `sparse=`, the
per-sample-weights gradient, and max through the argmax forward records. Swapping one into a model
is one line: `torch.nn.EmbeddingBag(...)` -> `embag.nn.EmbeddingBag(...)`.
"""
import torch

import embag

__all__ = ["EmbeddingBag", "Embedding"]


def _weight_gradient(weight, rows_values_or_dense, sparse):
    if not sparse:
        return rows_values_or_dense
    rows, values = rows_values_or_dense
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, weight.shape)


def _float32_cpu(tensor, what):
    if tensor.dtype != torch.float32 or tensor.device.type != "cpu":
        raise embag.UnsupportedArray(f"embag.nn: {what} must be a float32 CPU tensor, got {tensor.dtype} on "
                                     f"{tensor.device}")


class _EmbeddingBagFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, input, offsets, per_sample_weights, mode, padding_idx, include_last_offset, max_norm,
                norm_type, scale_grad_by_freq, sparse):
        output, max_indices = embag.embedding_bag_forward(input, weight.detach(), offsets, max_norm, norm_type, mode,
                                                          per_sample_weights, include_last_offset, padding_idx)
        ctx.save_for_backward(weight, input, offsets, per_sample_weights, max_indices)
        ctx.options = (mode, padding_idx, include_last_offset, scale_grad_by_freq, sparse)
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        weight, input, offsets, per_sample_weights, max_indices = ctx.saved_tensors
        mode, padding_idx, include_last_offset, scale_grad_by_freq, sparse = ctx.options
        # autograd may hand an expanded (stride 0) gradient, as sum() does: the library reads rows
        # in place, so make it contiguous here (B x D, the size of the output, never the table)
        grad_output = grad_output.contiguous()
        grad_weight = grad_per_sample_weights = None
        if ctx.needs_input_grad[0]:
            grad_weight = _weight_gradient(weight, embag.embedding_bag_backward(
                grad_output, input, weight.shape[0], offsets, mode, per_sample_weights, include_last_offset,
                padding_idx, scale_grad_by_freq, max_indices, sparse), sparse)
        if ctx.needs_input_grad[3]:
            grad_per_sample_weights = embag.per_sample_weights_grad(grad_output, weight.detach(), input,
                                                                    per_sample_weights, offsets, mode,
                                                                    include_last_offset, padding_idx)
        return grad_weight, None, None, grad_per_sample_weights, None, None, None, None, None, None, None


class _EmbeddingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, input, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse):
        output = embag.embedding(input, weight.detach(), padding_idx, max_norm, norm_type)
        ctx.save_for_backward(input)
        ctx.options = (weight.shape[0], padding_idx, scale_grad_by_freq, sparse)
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        rows, padding_idx, scale_grad_by_freq, sparse = ctx.options
        grad_output = grad_output.contiguous()  # as for EmbeddingBag: the size of the output
        grad = embag.embedding_backward(grad_output, input, rows, padding_idx, scale_grad_by_freq, sparse)
        if sparse:
            grad = torch.sparse_coo_tensor(grad[0].unsqueeze(0), grad[1], (rows, grad_output.shape[-1]))
        return grad, None, None, None, None, None, None


class EmbeddingBag(torch.nn.EmbeddingBag):
    """torch.nn.EmbeddingBag (same arguments, parameters and from_pretrained), computed by embag."""

    def forward(self, input, offsets=None, per_sample_weights=None):
        _float32_cpu(self.weight, "weight")
        return _EmbeddingBagFunction.apply(self.weight, input, offsets, per_sample_weights, self.mode,
                                           self.padding_idx, self.include_last_offset, self.max_norm, self.norm_type,
                                           self.scale_grad_by_freq, self.sparse)


class Embedding(torch.nn.Embedding):
    """torch.nn.Embedding (same arguments, parameters and from_pretrained), computed by embag."""

    def forward(self, input):
        _float32_cpu(self.weight, "weight")
        return _EmbeddingFunction.apply(self.weight, input, self.padding_idx, self.max_norm, self.norm_type,
                                        self.scale_grad_by_freq, self.sparse)
