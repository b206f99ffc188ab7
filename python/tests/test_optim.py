"""Optimizers: embag.backward_update and embag.apply_sparse_gradient against their formulas written
in NumPy float32 on embag's own sparse gradient (bit for bit: the library compiles without
floating-point contraction), embag.optim fused into embag.nn against torch.optim on
torch.nn.EmbeddingBag(sparse=True), bad input (raises, writes nothing), and 16-bit tables rounded
to nearest and stochastically. The torch tests skip where torch is not importable."""
import importlib.util

import numpy as np
import pytest

import embag

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not importable")

ROWS, DIM = 60, 24  # 24: one 16-lane block and a tail, for the rowwise sum's lanes
F = np.float32


def batch(seed, rows=ROWS, bags=7, mean_length=5):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 2 * mean_length, bags)
    indices = rng.integers(0, rows, int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    grad_output = rng.standard_normal((bags, DIM)).astype(F)
    return indices, offsets, grad_output


def table(seed, rows=ROWS):
    return np.random.default_rng(seed).uniform(-1, 1, (rows, DIM)).astype(F)


def rowwise_mean_of_squares(g):
    """optim.hpp's order: 16 lanes (lane d % 16) summed in column order, then added 8 + 8, 4 + 4,
    2 + 2, 1 + 1; divided by dim. float32 throughout."""
    lanes = np.zeros((g.shape[0], 16), F)
    for d in range(g.shape[1]):
        lanes[:, d % 16] += g[:, d] * g[:, d]
    width = 8
    while width >= 1:
        lanes[:, :width] += lanes[:, width:2 * width]
        width //= 2
    return lanes[:, 0] / F(g.shape[1])


def numpy_step(kind, w, s, g, lr, eps, weight_decay):
    """optim.hpp's formulas on the rows' weights w, state s and gradient g, float32: (new w, new s)."""
    lr, eps, weight_decay = F(lr), F(eps), F(weight_decay)
    if weight_decay != 0:
        g = g + weight_decay * w
    if kind == "sgd":
        return w - lr * g, s
    if kind == "adagrad":
        s = s + g * g
        return w - lr * (g / (np.sqrt(s) + eps)), s
    s = s + rowwise_mean_of_squares(g)
    step = lr / (np.sqrt(s) + eps)
    return w - step[:, None] * g, s


def new_state(kind, value=0.0, rows=ROWS):
    return {"sgd": None, "adagrad": np.full((rows, DIM), value, F),
            "rowwise_adagrad": np.full(rows, value, F)}[kind]


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "rowwise_adagrad"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_backward_update_is_the_formulas_on_backward_sparse_bit_for_bit(kind, mode, weight_decay):
    weight, state = table(1), new_state(kind, 0.1)
    expected_w, expected_s = weight.copy(), None if state is None else state.copy()
    for step in range(3):
        indices, offsets, grad_output = batch(10 + step)
        _, max_indices = embag.embedding_bag_forward(indices, weight, offsets, mode=mode)
        rows, g = embag.embedding_bag_backward(grad_output, indices, ROWS, offsets, mode=mode,
                                               max_indices=max_indices, sparse=True)
        summary = embag.backward_update(grad_output, indices, weight, offsets, mode=mode, max_indices=max_indices,
                                        optimizer=kind, lr=0.3, eps=1e-6, weight_decay=weight_decay, state=state)
        w, s = numpy_step(kind, expected_w[rows], None if expected_s is None else expected_s[rows], g, 0.3, 1e-6,
                          weight_decay)
        expected_w[rows] = w
        if expected_s is not None:
            expected_s[rows] = s
        assert (summary.rows_updated, summary.rows_not_finite, summary.first_not_finite_row) == (len(rows), 0, -1)
        np.testing.assert_array_equal(weight, expected_w)
        if state is not None:
            np.testing.assert_array_equal(state, expected_s)


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "rowwise_adagrad"])
def test_apply_sparse_gradient_is_backward_update_unfused(kind):
    indices, offsets, grad_output = batch(3)
    fused, unfused = table(2), table(2)
    fused_state, unfused_state = new_state(kind, 0.5), new_state(kind, 0.5)
    embag.backward_update(grad_output, indices, fused, offsets, mode="sum", optimizer=kind, lr=0.1,
                          state=fused_state)
    rows, values = embag.embedding_bag_backward(grad_output, indices, ROWS, offsets, mode="sum", sparse=True)
    summary = embag.apply_sparse_gradient(unfused, rows, values, optimizer=kind, lr=0.1, state=unfused_state)
    assert summary.rows_updated == len(rows)
    np.testing.assert_array_equal(fused, unfused)
    if fused_state is not None:
        np.testing.assert_array_equal(fused_state, unfused_state)


def test_a_row_whose_update_is_not_finite_is_left_and_counted():
    weight, state = table(4), new_state("adagrad")
    before = weight.copy()
    indices, offsets = np.array([5, 9, 9]), np.array([0, 1])
    grad_output = np.ones((2, DIM), F)
    grad_output[0, 3] = np.inf  # row 5's gradient
    summary = embag.backward_update(grad_output, indices, weight, offsets, mode="sum", optimizer="adagrad", lr=0.1,
                                    state=state)
    assert (summary.rows_updated, summary.rows_not_finite, summary.first_not_finite_row) == (1, 1, 5)
    np.testing.assert_array_equal(weight[5], before[5])
    assert (state[5] == 0).all() and (weight[9] != before[9]).all()
    assert repr(summary) == "embag.UpdateSummary(rows_updated=1, rows_not_finite=1, first_not_finite_row=5)"


# ---------------------------------------------------------------------------------------------
# Bad input: the package's exception types, and nothing written.

def bad_calls():
    indices, offsets, grad_output = batch(5)
    weight, state = table(6), new_state("adagrad")

    def update(**changes):
        args = dict(grad_output=grad_output, input=indices, weight=weight, offsets=offsets, optimizer="adagrad",
                    lr=0.1, state=state)
        args.update(changes)
        return lambda: embag.backward_update(**args)

    rows = np.array([1, 4, 7])
    values = np.ones((3, DIM), F)

    def apply(**changes):
        args = dict(weight=weight, rows=rows, values=values, optimizer="adagrad", lr=0.1, state=state)
        args.update(changes)
        return lambda: embag.apply_sparse_gradient(**args)

    out_of_range = indices.copy()
    out_of_range[-1] = ROWS
    return weight, state, [
        (embag.IndexOutOfRange, "index_out_of_range", update(input=out_of_range)),
        (embag.InvalidArgument, "size_mismatch", update(state=np.zeros((ROWS, DIM - 1), F))),
        (embag.InvalidArgument, "size_mismatch", update(state=None)),
        (embag.InvalidArgument, "invalid_option", update(optimizer="sgd")),  # sgd keeps no state
        (embag.InvalidArgument, "invalid_option", update(optimizer="adam")),
        (embag.InvalidArgument, "invalid_option", update(lr=-0.1)),
        (embag.InvalidArgument, "invalid_option", update(lr=float("nan"))),
        (embag.InvalidArgument, "invalid_option", update(eps=float("inf"))),
        (embag.InvalidArgument, "invalid_option", update(rounding="up")),
        (embag.InvalidArgument, "invalid_option", update(seed=-1)),
        (embag.InvalidArgument, "invalid_option", update(dtype="int8")),
        (embag.InvalidArgument, "size_mismatch", update(grad_output=grad_output[:-1].copy())),
        (embag.InvalidArgument, "bad_offsets", update(offsets=offsets[::-1].copy())),
        (embag.UnsupportedArray, "unsupported_array", update(weight=weight.astype(np.float64))),
        (embag.UnsupportedArray, "unsupported_array", update(weight=weight.view(np.uint16))),  # 16-bit: which?
        (embag.UnsupportedArray, "unsupported_array", update(dtype="bf16")),  # a float32 weight
        (embag.UnsupportedArray, "unsupported_array", update(state=state.astype(np.float64))),
        (embag.UnsupportedArray, "unsupported_array", update(weight=np.asfortranarray(weight))),
        (embag.IndexOutOfRange, "index_out_of_range", apply(rows=np.array([1, 4, ROWS]))),
        (embag.InvalidArgument, "invalid_option", apply(rows=np.array([1, 7, 4]))),
        (embag.InvalidArgument, "invalid_option", apply(rows=np.array([1, 4, 4]))),
        (embag.InvalidArgument, "size_mismatch", apply(values=np.ones((2, DIM), F))),
        (embag.InvalidArgument, "size_mismatch", apply(state=np.zeros(ROWS, F))),
        (embag.UnsupportedArray, "unsupported_array", apply(rows=rows.astype(np.int32))),
    ]


@pytest.mark.parametrize("number", range(len(bad_calls()[2])))
def test_bad_input_raises_the_packages_errors_and_writes_nothing(number):
    weight, state, calls = bad_calls()
    error, code, call = calls[number]
    weight_before, state_before = weight.copy(), state.copy()
    with pytest.raises(error) as caught:
        call()
    assert caught.value.code == code and isinstance(caught.value, embag.Error)
    np.testing.assert_array_equal(weight, weight_before)
    np.testing.assert_array_equal(state, state_before)


def test_a_read_only_weight_is_refused():
    weight = table(7)
    weight.flags.writeable = False
    indices, offsets, grad_output = batch(7)
    with pytest.raises(embag.UnsupportedArray, match="read-only"):
        embag.backward_update(grad_output, indices, weight, offsets, optimizer="sgd", lr=0.1)


# ---------------------------------------------------------------------------------------------
# 16-bit tables.

def bf16_bits_nearest(x):
    """float32 -> bfloat16 bits, to nearest, ties to even (finite x)."""
    bits = x.astype(F).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_values(bits):
    return (bits.astype(np.uint32) << 16).view(F)


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "rowwise_adagrad"])
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_16_bit_tables_round_the_fp32_update_to_nearest(kind, dtype):
    start = table(8)
    if dtype == "f16":
        weight, read, dtype_arg = start.astype(np.float16), lambda t: t.astype(F), None
    else:
        weight, read, dtype_arg = bf16_bits_nearest(start), bf16_values, "bf16"
    state = new_state(kind, 0.1)
    indices, offsets, grad_output = batch(9)
    rows, g = embag.embedding_bag_backward(grad_output, indices, ROWS, offsets, mode="sum", sparse=True)
    w, _ = numpy_step(kind, read(weight)[rows], None if state is None else state[rows].copy(), g, 0.05, 1e-10, 0.0)
    expected = weight.copy()
    expected[rows] = w.astype(np.float16) if dtype == "f16" else bf16_bits_nearest(w)
    embag.backward_update(grad_output, indices, weight, offsets, mode="sum", optimizer=kind, lr=0.05, state=state,
                          dtype=dtype_arg)
    np.testing.assert_array_equal(weight.view(np.uint16), expected.view(np.uint16))


def neighbours(exact, dtype):
    """The 16-bit values just below and just above each fp32 value (both itself when it is one)."""
    if dtype == "f16":
        n = exact.astype(np.float16)
        down = np.where(n.astype(F) <= exact, n, np.nextafter(n, np.float16(-np.inf)))
        up = np.where(n.astype(F) >= exact, n, np.nextafter(n, np.float16(np.inf)))
        return down.astype(F), up.astype(F)
    truncated_bits = exact.view(np.uint32) & np.uint32(0xFFFF0000)
    toward_zero = truncated_bits.view(F)
    away = np.where(toward_zero == exact, toward_zero, (truncated_bits + np.uint32(0x10000)).view(F))
    return np.where(exact >= 0, toward_zero, away), np.where(exact >= 0, away, toward_zero)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_stochastic_rounding_is_reproducible_from_its_seed_and_rounds_down_or_up(dtype):
    start = table(10)
    weight = start.astype(np.float16).view(np.uint16) if dtype == "f16" else bf16_bits_nearest(start)
    read = (lambda t: t.view(np.float16).astype(F)) if dtype == "f16" else bf16_values
    indices, offsets, grad_output = batch(11)
    rows, g = embag.embedding_bag_backward(grad_output, indices, ROWS, offsets, mode="sum", sparse=True)
    exact, _ = numpy_step("sgd", read(weight)[rows], None, g, 1e-3, 0, 0)  # small steps: rounding decides

    def step(seed):
        w = weight.copy()
        embag.backward_update(grad_output, indices, w, offsets, mode="sum", optimizer="sgd", lr=1e-3,
                              rounding="stochastic", seed=seed, dtype=dtype)
        return w

    first, again, other = step(7), step(7), step(8)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    # each element one of the two 16-bit values around the exact fp32 update, both directions taken
    got = read(first)[rows]
    down, up = neighbours(exact, dtype)
    assert ((got == down) | (got == up)).all()
    assert (got < exact).any() and (got > exact).any()
    untouched = np.setdiff1d(np.arange(ROWS), rows)
    np.testing.assert_array_equal(first[untouched], weight[untouched])


# ---------------------------------------------------------------------------------------------
# embag.optim with embag.nn against torch.optim with torch.nn.

def models(torch, seed, module_type, dtype=None, **module_args):
    torch.manual_seed(seed)
    init = torch.randn(ROWS, DIM)
    bags = module_type.from_pretrained(init, freeze=False, mode="sum", **module_args)
    if dtype is not None:
        bags = bags.to(dtype)
    top = torch.nn.Linear(DIM, 1)
    return bags, top


def torch_batches(torch, steps, seed=20):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        indices = torch.randint(0, ROWS, (30,), generator=g)
        offsets = torch.tensor([0, 4, 4, 11, 20, 26])
        target = torch.randn(6, 1, generator=g)
        out.append((indices, offsets, target))
    return out


def train(torch, bags, top, embedding_optimizer, steps, dense_lr=0.05):
    dense = torch.optim.SGD(top.parameters(), lr=dense_lr)
    for indices, offsets, target in torch_batches(torch, steps):
        loss = (top(bags(indices, offsets)) - target).square().mean()
        dense.zero_grad()
        embedding_optimizer.zero_grad()
        loss.backward()
        dense.step()
        embedding_optimizer.step()
    return bags.weight.detach(), top.weight.detach()


@needs_torch
@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_fused_optimizers_train_to_torchs_weights(name):
    import torch
    import embag.nn
    import embag.optim
    steps = 6
    theirs, their_top = models(torch, 3, torch.nn.EmbeddingBag, sparse=True)
    ours, our_top = models(torch, 3, embag.nn.EmbeddingBag)
    if name == "SGD":
        their_optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1)
        our_optimizer = embag.optim.SGD(ours, lr=0.1)
    else:
        their_optimizer = torch.optim.Adagrad(theirs.parameters(), lr=0.5, initial_accumulator_value=0.1, eps=1e-8)
        our_optimizer = embag.optim.Adagrad(ours, lr=0.5, initial_accumulator_value=0.1, eps=1e-8)
    their_weight, their_top_weight = train(torch, theirs, their_top, their_optimizer, steps)
    our_weight, our_top_weight = train(torch, ours, our_top, our_optimizer, steps)
    assert ours.weight.grad is None
    assert our_optimizer.state[ours.weight]["step"] == steps
    assert (our_weight != models(torch, 3, torch.nn.EmbeddingBag)[0].weight).any()  # it trained
    # torch sums a row's gradient in its own order: last bits differ, and the steps compound them
    torch.testing.assert_close(our_weight, their_weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_top_weight, their_top_weight, rtol=1e-5, atol=1e-5)
    if name == "Adagrad":
        torch.testing.assert_close(our_optimizer.state[ours.weight]["sum"], their_optimizer.state[theirs.weight]["sum"],
                                   rtol=1e-5, atol=1e-5)


@needs_torch
def test_the_gradient_of_per_sample_weights_still_flows():
    import torch
    import embag.nn
    import embag.optim
    theirs, _ = models(torch, 4, torch.nn.EmbeddingBag, sparse=True)
    ours, _ = models(torch, 4, embag.nn.EmbeddingBag)
    embag.optim.SGD(ours, lr=1.0)
    indices, offsets, target = torch_batches(torch, 1)[0]
    psw_theirs = torch.rand(indices.shape, generator=torch.Generator().manual_seed(5), requires_grad=True)
    psw_ours = psw_theirs.detach().clone().requires_grad_()
    theirs(indices, offsets, per_sample_weights=psw_theirs).mul(target).sum().backward()
    ours(indices, offsets, per_sample_weights=psw_ours).mul(target).sum().backward()
    # taken from the weights forward read, before the update moved them (lr 1: far)
    torch.testing.assert_close(psw_ours.grad, psw_theirs.grad)
    assert (ours.weight != theirs.weight).any()


@needs_torch
def test_embedding_and_a_whole_model_are_trained():
    import torch
    import embag.nn
    import embag.optim
    torch.manual_seed(6)
    model = torch.nn.ModuleDict(dict(lookup=embag.nn.Embedding(ROWS, DIM), bags=embag.nn.EmbeddingBag(ROWS, DIM)))
    reference = torch.nn.Embedding.from_pretrained(model.lookup.weight.detach().clone(), freeze=False, sparse=True)
    optimizer = embag.optim.Adagrad(model, lr=0.2)
    assert optimizer.modules == [model.lookup, model.bags]
    their_optimizer = torch.optim.Adagrad(reference.parameters(), lr=0.2)
    input = torch.tensor([[1, 5, 5], [7, 1, 0]])
    model.lookup(input).square().sum().backward()
    reference(input).square().sum().backward()
    their_optimizer.step()
    torch.testing.assert_close(model.lookup.weight.detach(), reference.weight.detach())
    assert model.lookup.weight.grad is None


@needs_torch
def test_the_state_saves_and_loads_with_state_dict(tmp_path):
    import torch
    import embag.nn
    import embag.optim

    def setup():
        bags, top = models(torch, 7, embag.nn.EmbeddingBag, dtype=torch.bfloat16)
        return bags, top, embag.optim.RowwiseAdagrad(bags, lr=0.1, rounding="stochastic", seed=3)

    straight, top, optimizer = setup()
    train(torch, straight, top, optimizer, 4)

    first, top, optimizer = setup()
    train(torch, first, top, optimizer, 2)
    torch.save(dict(model=first.state_dict(), top=top.state_dict(), optimizer=optimizer.state_dict()),
               tmp_path / "checkpoint.pt")
    resumed, top, optimizer = setup()
    checkpoint = torch.load(tmp_path / "checkpoint.pt")
    resumed.load_state_dict(checkpoint["model"])
    top.load_state_dict(checkpoint["top"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    state = optimizer.state[resumed.weight]
    assert state["step"] == 2 and state["sum"].dtype == torch.float32 and state["sum"].shape == (ROWS,)
    # the batches of steps 3 and 4, with the seeds of steps 3 and 4
    dense = torch.optim.SGD(top.parameters(), lr=0.05)
    for indices, offsets, target in torch_batches(torch, 4)[2:]:
        dense.zero_grad()
        (top(resumed(indices, offsets)) - target).square().mean().backward()
        dense.step()
    assert torch.equal(resumed.weight, straight.weight)


@needs_torch
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_weights_train_reproducibly_from_the_seed(dtype):
    import torch
    import embag.nn
    import embag.optim

    def run(seed, rounding="stochastic"):
        bags, top = models(torch, 8, embag.nn.EmbeddingBag, dtype=getattr(torch, dtype))
        optimizer = embag.optim.Adagrad(bags, lr=0.01, rounding=rounding, seed=seed)
        weight, _ = train(torch, bags, top, optimizer, 3)
        return weight

    start = models(torch, 8, embag.nn.EmbeddingBag, dtype=getattr(torch, dtype))[0].weight
    first, again, other, nearest = run(1), run(1), run(2), run(1, "nearest")
    assert first.dtype == getattr(torch, dtype)
    assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, start)
    assert not torch.equal(first, nearest)
    assert torch.equal(nearest, run(2, "nearest"))  # nearest ignores the seed


@needs_torch
def test_a_16_bit_weight_without_a_fused_optimizer_is_refused():
    import torch
    import embag.nn
    bags = embag.nn.EmbeddingBag(ROWS, DIM, dtype=torch.bfloat16)
    with pytest.raises(embag.UnsupportedArray, match="embag.optim"):
        bags(torch.tensor([1, 2]), torch.tensor([0]))
    bags.weight.requires_grad_(False)  # frozen: forward only
    expected = bags.weight[[1, 2]].float().mean(0)
    torch.testing.assert_close(bags(torch.tensor([1, 2]), torch.tensor([0]))[0], expected)


@needs_torch
def test_torch_tensors_work_with_the_functions():
    import torch
    weight = torch.randn(ROWS, DIM)
    state = torch.zeros(ROWS)
    indices, offsets, grad_output = (torch.from_numpy(a) for a in batch(12))
    expected = weight.clone()
    rows, values = embag.embedding_bag_backward(grad_output, indices, ROWS, offsets, mode="sum", sparse=True)
    embag.apply_sparse_gradient(expected, rows, values, optimizer="rowwise_adagrad", lr=0.1, state=state.clone())
    summary = embag.backward_update(grad_output, indices, weight, offsets, mode="sum", optimizer="rowwise_adagrad",
                                    lr=0.1, state=state)
    assert summary.rows_updated == len(rows) and torch.equal(weight, expected) and (state[rows] > 0).all()
