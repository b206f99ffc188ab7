"""The functional API on NumPy arrays (no torch): each result against the NumPy oracle (oracle.py)
and bit for bit against the library's scalar reference (embag.force_isa('reference'))."""
import contextlib
import inspect
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import embag  # noqa: E402
import oracle  # noqa: E402

ROWS, DIM = 50, 24


@contextlib.contextmanager
def isa(name):
    best = embag.active_isa()
    embag.force_isa(name)
    try:
        yield
    finally:
        embag.force_isa(best)


def on_reference(call):
    with isa("reference"):
        return call()


@pytest.fixture
def rng():
    return np.random.default_rng(16)


def table(rng):
    return rng.standard_normal((ROWS, DIM)).astype(np.float32)


def one_d_bags(rng, index_dtype, include_last_offset):
    # bags of 0 to 6 indices, one empty in the middle and one at the end, repeated rows
    lengths = [3, 0, 6, 1, 4, 0]
    indices = rng.integers(0, ROWS, sum(lengths)).astype(index_dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1 if not include_last_offset else None]]).astype(index_dtype)
    return indices, offsets


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "sqrtn"])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("include_last_offset", [False, True])
@pytest.mark.parametrize("padding_idx", [None, 7, -1])
def test_one_d_input_with_offsets(rng, mode, index_dtype, include_last_offset, padding_idx):
    weight = table(rng)
    indices, offsets = one_d_bags(rng, index_dtype, include_last_offset)
    indices[[0, 5]] = 7 if padding_idx == 7 else ROWS - 1  # padding inside bags
    kwargs = dict(mode=mode, include_last_offset=include_last_offset, padding_idx=padding_idx)
    out = embag.embedding_bag(indices, weight, offsets, **kwargs)
    assert out.dtype == np.float32 and out.shape == (6, DIM)
    np.testing.assert_allclose(out, oracle.embedding_bag(indices, weight, offsets, **kwargs), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out, on_reference(lambda: embag.embedding_bag(indices, weight, offsets, **kwargs)))


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "sqrtn"])
def test_two_d_input_is_fixed_length_bags(rng, mode):
    weight = table(rng)
    input = rng.integers(0, ROWS, (9, 4))
    out = embag.embedding_bag(input, weight, mode=mode)
    assert out.shape == (9, DIM)
    np.testing.assert_allclose(out, oracle.embedding_bag(input, weight, mode=mode), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out, on_reference(lambda: embag.embedding_bag(input, weight, mode=mode)))


def test_mean_is_the_default_mode_as_in_torch(rng):
    weight = table(rng)
    input = rng.integers(0, ROWS, (3, 5))
    np.testing.assert_array_equal(embag.embedding_bag(input, weight), embag.embedding_bag(input, weight, mode="mean"))
    assert not np.array_equal(embag.embedding_bag(input, weight), embag.embedding_bag(input, weight, mode="sum"))


def test_two_d_input_of_empty_bags_gives_zeros(rng):
    out = embag.embedding_bag(np.zeros((4, 0), np.int64), table(rng), mode="sum")
    np.testing.assert_array_equal(out, np.zeros((4, DIM), np.float32))


@pytest.mark.parametrize("mode", ["sum", "mean", "sqrtn"])
def test_per_sample_weights(rng, mode):
    weight = table(rng)
    indices, offsets = one_d_bags(rng, np.int64, False)
    psw = rng.uniform(0.1, 2.0, indices.size).astype(np.float32)
    out = embag.embedding_bag(indices, weight, offsets, mode=mode, per_sample_weights=psw)
    np.testing.assert_allclose(out, oracle.embedding_bag(indices, weight, offsets, mode, psw), rtol=1e-5, atol=1e-6)


def test_embedding_is_a_lookup_of_any_shape(rng):
    weight = table(rng)
    input = rng.integers(0, ROWS, (2, 3, 4))
    out = embag.embedding(input, weight)
    assert out.shape == (2, 3, 4, DIM)
    np.testing.assert_array_equal(out, weight[input])
    # torch's padding_idx only stops the gradient: the forward returns the row as it is
    np.testing.assert_array_equal(embag.embedding(input, weight, padding_idx=int(input[0, 0, 0])), weight[input])
    assert embag.embedding(np.zeros(0, np.int64), weight).shape == (0, DIM)


def test_max_norm_rescales_the_referenced_rows_in_place_as_torch(rng):
    weight = table(rng) * 3
    before = weight.copy()
    indices, offsets = np.array([1, 2, 2, 9]), np.array([0, 2])
    out = embag.embedding_bag(indices, weight, offsets, max_norm=1.5, mode="sum")
    norms = np.linalg.norm(before.astype(np.float64), axis=1)
    for r in range(ROWS):
        if r in (1, 2, 9) and norms[r] > 1.5:
            np.testing.assert_allclose(weight[r], before[r] * 1.5 / (norms[r] + 1e-7), rtol=1e-6)
        else:
            np.testing.assert_array_equal(weight[r], before[r])
    np.testing.assert_allclose(out, oracle.embedding_bag(indices, weight, offsets, "sum"), rtol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 7])
def test_backward_dense_and_sparse(rng, mode, padding_idx):
    weight = table(rng)
    indices, offsets = one_d_bags(rng, np.int64, False)
    indices[2] = 7
    out, max_indices = embag.embedding_bag_forward(indices, weight, offsets, mode=mode, padding_idx=padding_idx)
    assert (max_indices is not None) == (mode == "max")
    grad_output = rng.standard_normal(out.shape).astype(np.float32)
    kwargs = dict(mode=mode, padding_idx=padding_idx, max_indices=max_indices)
    dense = embag.embedding_bag_backward(grad_output, indices, ROWS, offsets, **kwargs)
    expected = oracle.embedding_bag_grad(grad_output, indices, ROWS, offsets, mode, padding_idx=padding_idx,
                                         weight=weight)
    np.testing.assert_allclose(dense, expected, rtol=1e-5, atol=1e-6)
    rows, values = embag.embedding_bag_backward(grad_output, indices, ROWS, offsets, sparse=True, **kwargs)
    assert list(rows) == sorted(set(int(i) for i in indices) - {padding_idx})
    np.testing.assert_array_equal(values, dense[rows])
    # dense accumulates into a given gradient
    accumulated = np.ones((ROWS, DIM), np.float32)
    embag.embedding_bag_backward(grad_output, indices, ROWS, offsets, grad_weight=accumulated, **kwargs)
    np.testing.assert_allclose(accumulated, dense + 1, rtol=1e-6)


def test_scale_grad_by_freq_divides_by_each_rows_count(rng):
    indices, offsets = np.array([4, 4, 4, 9]), np.array([0, 1])
    grad_output = np.ones((2, DIM), np.float32)
    grad = embag.embedding_bag_backward(grad_output, indices, ROWS, offsets, mode="sum", scale_grad_by_freq=True)
    np.testing.assert_allclose(grad[4], np.ones(DIM))  # three contributions of 1, each divided by 3
    np.testing.assert_allclose(grad[9], np.ones(DIM))


def test_embedding_backward_skips_padding(rng):
    input = np.array([[1, 3], [3, 0]])
    grad_output = rng.standard_normal((2, 2, DIM)).astype(np.float32)
    grad = embag.embedding_backward(grad_output, input, ROWS, padding_idx=0)
    np.testing.assert_allclose(grad[3], grad_output[0, 1] + grad_output[1, 0], rtol=1e-6)
    np.testing.assert_array_equal(grad[0], np.zeros(DIM))
    rows, values = embag.embedding_backward(grad_output, input, ROWS, padding_idx=0, sparse=True)
    assert list(rows) == [1, 3]
    np.testing.assert_array_equal(values, grad[[1, 3]])


def test_per_sample_weights_grad(rng):
    weight = table(rng)
    indices, offsets = one_d_bags(rng, np.int64, False)
    indices[3] = 11
    psw = rng.uniform(0.1, 2.0, indices.size).astype(np.float32)
    grad_output = rng.standard_normal((6, DIM)).astype(np.float32)
    grad = embag.per_sample_weights_grad(grad_output, weight, indices, psw, offsets, padding_idx=11)
    assert grad.shape == indices.shape and grad[3] == 0
    np.testing.assert_allclose(grad, oracle.per_sample_weights_grad(grad_output, weight, indices, offsets,
                                                                    padding_idx=11), rtol=1e-5, atol=1e-5)


def test_sparse_gradients_kept_stay_and_released_ones_are_reused_correctly(rng):
    # the extension recycles the memory of sparse gradients Python released: a kept one must not
    # change, and a reused one must hold only its own call's rows
    large = rng.integers(0, ROWS, 200), np.array([0, 100])
    small = np.array([5, 9]), np.array([0])
    grad_output = rng.standard_normal((2, DIM)).astype(np.float32)
    kept_rows, kept_values = embag.embedding_bag_backward(grad_output, *large[:1], ROWS, large[1], mode="sum",
                                                          sparse=True)
    expected_rows, expected_values = kept_rows.copy(), kept_values.copy()
    for _ in range(6):  # more than the extension keeps
        rows, values = embag.embedding_bag_backward(grad_output[:1], small[0], ROWS, small[1], mode="sum",
                                                    sparse=True)
        assert list(rows) == [5, 9]
        np.testing.assert_array_equal(values, np.stack([grad_output[0], grad_output[0]]))
        del rows, values
    np.testing.assert_array_equal(kept_rows, expected_rows)
    np.testing.assert_array_equal(kept_values, expected_values)


# embedding_bag and embedding_bag_forward are C functions binding their own arguments (vectorcall):
# they must bind them as the def with torch's signature would.
TORCH_SIGNATURE = [("input", None), ("weight", None), ("offsets", None), ("max_norm", None), ("norm_type", 2.0),
                   ("scale_grad_by_freq", False), ("mode", "mean"), ("sparse", False), ("per_sample_weights", None),
                   ("include_last_offset", False), ("padding_idx", None)]


def test_embedding_bag_has_torchs_signature():
    parameters = inspect.signature(embag.embedding_bag).parameters
    assert [(p.name, None if p.default is inspect.Parameter.empty else p.default) for p in parameters.values()] == \
        TORCH_SIGNATURE
    assert [p.name for p in parameters.values() if p.default is inspect.Parameter.empty] == ["input", "weight"]
    forward = inspect.signature(embag.embedding_bag_forward).parameters
    assert list(forward) == [name for name, _ in TORCH_SIGNATURE if name not in ("scale_grad_by_freq", "sparse")]


def test_arguments_bind_by_position_and_by_keyword_alike(rng):
    weight = table(rng)
    indices, offsets = one_d_bags(rng, np.int64, True)
    psw = rng.uniform(0.5, 1.5, indices.size).astype(np.float32)
    values = dict(input=indices, weight=weight, offsets=offsets, max_norm=None, norm_type=2.0,
                  scale_grad_by_freq=False, mode="sum", sparse=False, per_sample_weights=psw,
                  include_last_offset=True, padding_idx=3)
    expected = oracle.embedding_bag(indices, weight, offsets, "sum", per_sample_weights=psw, include_last_offset=True,
                                    padding_idx=3)
    positional = list(values.values())
    np.testing.assert_allclose(embag.embedding_bag(*positional), expected, rtol=1e-5, atol=1e-6)
    for split in (2, 5, 9):  # the rest as keywords, in reverse order
        keywords = dict(reversed(list(values.items())[split:]))
        np.testing.assert_allclose(embag.embedding_bag(*positional[:split], **keywords), expected, rtol=1e-5,
                                   atol=1e-6)
    keywords = {name: values[name] for name in ("input", "weight", "offsets", "mode", "per_sample_weights",
                                                 "include_last_offset", "padding_idx")}
    out, max_indices = embag.embedding_bag_forward(**keywords)
    assert max_indices is None
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda w: embag.embedding_bag(np.array([1]), w, np.array([0]), modes="sum"),
     r"^embedding_bag\(\) got an unexpected keyword argument 'modes'$"),
    (lambda w: embag.embedding_bag(np.array([1]), w, np.array([0]), offsets=np.array([0])),
     r"^embedding_bag\(\) got multiple values for argument 'offsets'$"),
    (lambda w: embag.embedding_bag(np.array([1]), offsets=np.array([0])),
     r"^embedding_bag\(\) missing required argument 'weight'$"),
    (lambda w: embag.embedding_bag(weight=w),
     r"^embedding_bag\(\) missing required argument 'input'$"),
    (lambda w: embag.embedding_bag(np.array([1]), w, np.array([0]), None, 2.0, False, "sum", False, None, False,
                                   None, 7),
     r"^embedding_bag\(\) takes at most 11 arguments \(12 given\)$"),
    (lambda w: embag.embedding_bag_forward(np.array([1]), w, np.array([0]), sparse=False),
     r"^embedding_bag_forward\(\) got an unexpected keyword argument 'sparse'$"),
])
def test_misbound_arguments_are_pythons_type_errors(rng, call, message):
    with pytest.raises(TypeError, match=message) as caught:
        call(table(rng))
    assert not isinstance(caught.value, embag.Error)


def test_a_mode_that_is_no_string_is_refused(rng):
    with pytest.raises(embag.InvalidArgument, match=r"mode = 1 is not one of 'sum', 'mean'") as caught:
        embag.embedding_bag(np.array([1]), table(rng), np.array([0]), mode=1)
    assert caught.value.code == "invalid_option"
