"""Bad input raises embag.Error subclasses (IndexError / ValueError / OSError where they fit) carrying
the library's message and code, and writes nothing."""
import numpy as np
import pytest

import embag

WEIGHT = np.arange(40, dtype=np.float32).reshape(10, 4)


def test_an_index_out_of_range_is_an_index_error_naming_position_and_value():
    with pytest.raises(embag.IndexOutOfRange, match=r"indices\[2\] = 10 is out of range \[0, 10\)") as caught:
        embag.embedding_bag(np.array([1, 2, 10]), WEIGHT, np.array([0, 1]))
    error = caught.value
    assert isinstance(error, IndexError) and isinstance(error, embag.Error)
    assert error.code == "index_out_of_range"


@pytest.mark.parametrize("code, message, call", [
    ("bad_offsets", "offsets", lambda: embag.embedding_bag(np.array([1, 2]), WEIGHT, np.array([0, 3]))),
    ("bad_offsets", "offsets", lambda: embag.embedding_bag(np.array([1, 2]), WEIGHT, np.array([1]))),
    ("invalid_option", "padding_idx", lambda: embag.embedding_bag(np.array([1]), WEIGHT, np.array([0]),
                                                                  padding_idx=10)),
    ("invalid_option", "mode = 'median'", lambda: embag.embedding_bag(np.array([1]), WEIGHT, np.array([0]),
                                                                      mode="median")),
    ("invalid_option", "per_sample_weights", lambda: embag.embedding_bag(
        np.array([1]), WEIGHT, np.array([0]), mode="max", per_sample_weights=np.ones(1, np.float32))),
    ("size_mismatch", "per_sample_weights", lambda: embag.embedding_bag(
        np.array([1, 2]), WEIGHT, np.array([0]), mode="sum", per_sample_weights=np.ones(3, np.float32))),
    ("invalid_option", "max_norm", lambda: embag.embedding_bag(np.array([1]), WEIGHT.copy(), np.array([0]),
                                                               max_norm=-1.0)),
    ("invalid_shape", "offsets must be None", lambda: embag.embedding_bag(np.ones((2, 2), np.int64), WEIGHT,
                                                                          np.array([0]))),
    ("invalid_shape", "offsets are required", lambda: embag.embedding_bag(np.array([1]), WEIGHT)),
    ("invalid_shape", "input must be 1-D", lambda: embag.embedding_bag(np.ones((1, 1, 1), np.int64), WEIGHT)),
])
def test_bad_arguments_are_value_errors_with_the_librarys_code(code, message, call):
    with pytest.raises(embag.InvalidArgument, match=message) as caught:
        call()
    assert isinstance(caught.value, ValueError) and caught.value.code == code


def test_a_refused_call_writes_nothing():
    weight = WEIGHT.copy()
    grad = np.full((10, 4), 5, np.float32)
    # max_norm in place with a bad index: the table keeps every row
    with pytest.raises(embag.IndexOutOfRange):
        embag.embedding_bag(np.array([1, 2, -1]), weight, np.array([0]), max_norm=1.0)
    np.testing.assert_array_equal(weight, WEIGHT)
    with pytest.raises(embag.IndexOutOfRange):
        embag.embedding_bag_backward(np.ones((1, 4), np.float32), np.array([1, 99]), 10, np.array([0]),
                                     grad_weight=grad)
    np.testing.assert_array_equal(grad, np.full((10, 4), 5, np.float32))


def test_isa_and_thread_controls_refuse_what_does_not_exist():
    with pytest.raises(embag.InvalidArgument, match="'sse9' names no instruction set") as caught:
        embag.force_isa("sse9")
    assert caught.value.code == "unsupported_isa"
    missing = [isa for isa in ("sse2", "avx2", "avx512", "neon") if isa not in embag.available_isas()]
    with pytest.raises(embag.InvalidArgument) as caught:
        embag.force_isa(missing[0])
    assert caught.value.code == "unsupported_isa"
    with pytest.raises(embag.InvalidArgument, match="must be >= 0"):
        embag.set_num_threads(-1)


def test_file_errors_are_os_errors(tmp_path):
    with pytest.raises(embag.FileError) as caught:
        embag.Table.open(str(tmp_path / "missing.embag"))
    assert isinstance(caught.value, OSError) and caught.value.code == "io_error"
    garbage = tmp_path / "garbage.embag"
    garbage.write_bytes(b"not an embag file at all, just some bytes long enough for a header")
    with pytest.raises(embag.InvalidArgument, match="garbage.embag") as caught:
        embag.Table.open(str(garbage))
    assert caught.value.code == "bad_file"


@pytest.mark.parametrize("shape, error, code, why", [
    ((1 << 20, 1 << 28), embag.OutOfMemory, "out_of_memory", "out of memory"),
    ((1 << 40, 1 << 40), embag.InvalidArgument, "size_overflow", "its size in bytes overflows"),
    ((-1, 3), embag.InvalidArgument, "invalid_shape", "an extent is negative"),
])
def test_an_output_that_cannot_be_made_is_an_error_naming_its_shape(shape, error, code, why):
    # the extension's allocator of outputs (embag.embedding_bags, per_sample_weights_grad ask it)
    with pytest.raises(error, match=f"an output of shape \\({shape[0]}, {shape[1]}\\) and dtype float32: {why}") as caught:
        embag._embag.empty(shape, "float32", ())
    assert caught.value.code == code
