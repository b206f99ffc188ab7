"""embag.optim: optimizers fused into embag.nn's backward, as TorchRec's fused optimizers are.

    bags = embag.nn.EmbeddingBag(1_000_000, 128, mode='sum')
    optimizer = embag.optim.Adagrad(bags, lr=0.05)   # or model: every embag.nn module in it

From then on the module's backward updates its weight in place (embag.backward_update: the sparse
gradient's rows and the optimizer's step in one pass) and leaves weight.grad None; step() and
zero_grad() have nothing left to do, and torch optimizers given the model's other parameters skip
the weight, which has no gradient. The gradient of per_sample_weights still flows. Each backward is
one step: accumulating gradients over several backward calls before a step is not possible.

Each optimizer is a torch.optim.Optimizer: param_groups (lr and the rest, which schedulers may
change between steps), and state_dict / load_state_dict with the state as float32 tensors per
weight: Adagrad's 'sum' (the table's shape, torch's name), RowwiseAdagrad's 'sum' (one per row),
and 'step', the number of updates so far. A float16 or bfloat16 weight is updated in 16 bits,
rounded to nearest or stochastically (rounding='stochastic'), from seed + step: each step its own
random bits, reproducible from the seed.

The updates (embag/optim.hpp), per element of a touched row with gradient g (plus weight_decay * w,
on the touched rows only):
    SGD             w -= lr g                                  (torch.optim.SGD without momentum)
    Adagrad         s += g g; w -= lr g / (sqrt(s) + eps)      (torch.optim.Adagrad, lr_decay 0)
    RowwiseAdagrad  s_row += mean(g g); w -= lr g / (sqrt(s_row) + eps)   (FBGEMM's rowwise Adagrad)
"""
import torch

import embag
import embag.nn

__all__ = ["SGD", "Adagrad", "RowwiseAdagrad"]


def _embedding_modules(modules):
    """The embag.nn modules of `modules`: one module (and the embag.nn modules inside it, so that a
    whole model may be passed) or an iterable of them."""
    roots = [modules] if isinstance(modules, torch.nn.Module) else list(modules)
    found = []
    for root in roots:
        if not isinstance(root, torch.nn.Module):
            raise TypeError(f"embag.optim: expected embag.nn modules (or modules holding them), got "
                            f"{type(root).__name__}")
        for module in root.modules():
            if isinstance(module, (embag.nn.EmbeddingBag, embag.nn.Embedding)) and module not in found:
                found.append(module)
    if not found:
        raise ValueError("embag.optim: no embag.nn.EmbeddingBag or embag.nn.Embedding among the modules given")
    return found


class _FusedOptimizer(torch.optim.Optimizer):
    kind = None  # the library's optimizer: 'sgd', 'adagrad' or 'rowwise_adagrad'

    def __init__(self, modules, defaults):
        if defaults["lr"] < 0:
            raise ValueError(f"embag.optim: lr = {defaults['lr']} must be >= 0")
        if defaults["rounding"] not in ("nearest", "stochastic"):
            raise ValueError(f"embag.optim: rounding = {defaults['rounding']!r} is not 'nearest' or 'stochastic'")
        self.modules = _embedding_modules(modules)
        for module in self.modules:
            if module.fused_optimizer is not None:
                raise ValueError(f"embag.optim: {module} already has a fused optimizer")
        super().__init__([module.weight for module in self.modules], defaults)
        for module in self.modules:
            self.state[module.weight] = self._initial_state(module.weight)
            module.fused_optimizer = self
        self.last_summary = None  # the embag.UpdateSummary of the latest update

    def _initial_state(self, weight):
        return {"step": 0}

    def _group_of(self, weight):
        for group in self.param_groups:
            if any(p is weight for p in group["params"]):
                return group
        raise KeyError("embag.optim: this weight is not one the optimizer trains")

    def _update(self, weight, grad_output, input, **bags):
        """The module's backward: the weight's rows updated in place from grad_output."""
        group = self._group_of(weight)
        state = self.state[weight]
        self.last_summary = embag.backward_update(
            grad_output, input, weight.detach(), optimizer=self.kind, lr=group["lr"], state=state.get("sum"),
            eps=group.get("eps", 0.0), weight_decay=group["weight_decay"], rounding=group["rounding"],
            seed=(group["seed"] + state["step"]) % 2**64, **bags)
        state["step"] += 1

    @torch.no_grad()
    def step(self, closure=None):
        """Nothing to do: every update happened in backward. Runs the closure, if any, as torch's do."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # torch casts floating state to its parameter's dtype: a float16 weight's float32 sum
        # would come back float16. The state is float32 whatever the weight's.
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            for key, value in saved.items():
                if isinstance(value, torch.Tensor):
                    self.state[params[index]][key] = value.to(torch.float32, copy=True).contiguous()


class SGD(_FusedOptimizer):
    """w -= lr * g on the rows each backward touches (torch.optim.SGD without momentum)."""
    kind = "sgd"

    def __init__(self, modules, lr, weight_decay=0.0, rounding="nearest", seed=0):
        super().__init__(modules, dict(lr=lr, weight_decay=weight_decay, rounding=rounding, seed=seed))


class Adagrad(_FusedOptimizer):
    """torch.optim.Adagrad (lr_decay 0) on the rows each backward touches; state 'sum' (rows x dim,
    float32) starts at initial_accumulator_value."""
    kind = "adagrad"

    def __init__(self, modules, lr=0.01, eps=1e-10, weight_decay=0.0, initial_accumulator_value=0.0,
                 rounding="nearest", seed=0):
        super().__init__(modules, dict(lr=lr, eps=eps, weight_decay=weight_decay,
                                       initial_accumulator_value=initial_accumulator_value, rounding=rounding,
                                       seed=seed))

    def _initial_state(self, weight):
        start = self._group_of(weight)["initial_accumulator_value"]
        return {"step": 0, "sum": torch.full(tuple(weight.shape), float(start), dtype=torch.float32)}


class RowwiseAdagrad(Adagrad):
    """FBGEMM's rowwise Adagrad: one accumulator per row ('sum', rows, float32) of the mean of g * g
    over the row; a row's elements share its step size lr / (sqrt(sum) + eps)."""
    kind = "rowwise_adagrad"

    def _initial_state(self, weight):
        start = self._group_of(weight)["initial_accumulator_value"]
        return {"step": 0, "sum": torch.full((weight.shape[0],), float(start), dtype=torch.float32)}
