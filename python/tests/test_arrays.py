"""Arrays are read in place, never copied: read-only and mapped arrays are accepted, outputs are new
arrays that alias no input, strided arrays either work (a table's row stride) or are refused by name,
and a mapped table larger than the memory the process may allocate is served."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import embag


def test_output_is_a_new_array_aliasing_no_input():
    weight = np.ones((10, 8), np.float32)
    indices, offsets = np.array([1, 2, 3]), np.array([0, 1])
    out = embag.embedding_bag(indices, weight, offsets)
    assert type(out) is np.ndarray and out.flags.c_contiguous and out.flags.writeable
    for array in (weight, indices, offsets):
        assert not np.shares_memory(out, array)


def _address(array):
    return array.__array_interface__["data"][0]


def test_a_released_outputs_memory_serves_the_next_output():
    """Fresh memory costs page faults (released_memory.hpp): a released output's block is reused even
    when the process's allocator handed the freed memory to someone else in between."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((1000, 128)).astype(np.float32)
    indices, offsets = rng.integers(0, 1000, 2048), np.arange(2048)
    out = embag.embedding_bag(indices, weight, offsets, mode="sum")
    first = _address(out)
    del out
    other = np.ones((2048, 128), np.float32)  # what malloc would give the next output
    again = embag.embedding_bag(indices, weight, offsets, mode="sum")
    assert _address(again) == first and not np.shares_memory(again, other)
    np.testing.assert_array_equal(again, embag.embedding_bag(indices, weight, offsets, mode="sum"))


def test_an_output_still_seen_through_a_view_is_not_reused():
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((100, 64)).astype(np.float32)
    indices, offsets = rng.integers(0, 100, 512), np.arange(512)
    out = embag.embedding_bag(indices, weight, offsets, mode="sum")
    view, expected = out[1:], out[1:].copy()
    del out
    for _ in range(3):
        other = embag.embedding_bag(indices[::-1].copy(), weight, offsets, mode="sum")
        assert not np.shares_memory(other, view)
    np.testing.assert_array_equal(view, expected)


def test_the_buffer_cache_keeps_released_outputs_up_to_its_limit():
    weight = np.ones((100, 64), np.float32)
    indices, offsets = np.arange(4096) % 100, np.arange(4096)
    previous = embag.set_buffer_cache_limit(0)
    try:
        assert embag.buffer_cache_bytes() == 0
        embag.embedding_bag(indices, weight, offsets)  # released at once, and not kept
        assert embag.buffer_cache_bytes() == 0
        embag.set_buffer_cache_limit(1 << 20)
        embag.embedding_bag(indices, weight, offsets)  # 4096 x 64 floats: exactly 1 MiB
        assert embag.buffer_cache_bytes() == 1 << 20
        embag.embedding_bag(indices[:2048], weight, offsets[:2048])  # served by the kept block
        assert embag.buffer_cache_bytes() == 1 << 20
        assert embag.set_buffer_cache_limit(1000) == 1 << 20
        assert embag.buffer_cache_bytes() == 0  # lowering the limit drops what is over it
        with pytest.raises(embag.InvalidArgument, match="must be >= 0"):
            embag.set_buffer_cache_limit(-1)
    finally:
        embag.set_buffer_cache_limit(previous)


def test_read_only_and_mapped_inputs_are_accepted(tmp_path):
    weight = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "weight.npy", weight)
    mapped = np.load(tmp_path / "weight.npy", mmap_mode="r")
    assert not mapped.flags.writeable
    indices, offsets = np.array([1, 2, 3]), np.array([0, 1])
    indices.setflags(write=False)
    offsets.setflags(write=False)
    out = embag.embedding_bag(indices, mapped, offsets, mode="sum")
    np.testing.assert_array_equal(out, [weight[1], weight[2] + weight[3]])
    # memoryview and other buffer-protocol objects too
    np.testing.assert_array_equal(embag.embedding_bag(memoryview(indices), memoryview(weight), memoryview(offsets),
                                                      mode="sum"), out)


def test_a_read_only_table_cannot_be_renormalised_in_place(tmp_path):
    weight = np.ones((10, 4), np.float32)
    weight.setflags(write=False)
    with pytest.raises(embag.UnsupportedArray, match="weight .* is read-only, and this call rescales its rows"):
        embag.embedding_bag(np.array([1]), weight, np.array([0]), max_norm=0.5)


def test_a_table_with_a_row_stride_is_read_in_place():
    wide = np.arange(10 * 12, dtype=np.float32).reshape(10, 12)
    view = wide[:, :5]  # rows 12 floats apart, 5 used
    assert not view.flags.c_contiguous
    indices, offsets = np.array([1, 4, 9]), np.array([0, 2])
    np.testing.assert_array_equal(embag.embedding_bag(indices, view, offsets, mode="sum"),
                                  embag.embedding_bag(indices, np.ascontiguousarray(view), offsets, mode="sum"))


@pytest.mark.parametrize("case", ["columns", "fortran", "reversed rows"])
def test_a_table_whose_rows_are_not_contiguous_is_refused(case):
    wide = np.ones((10, 8), np.float32)
    weight = {"columns": wide[:, ::2], "fortran": np.asfortranarray(wide), "reversed rows": wide[::-1]}[case]
    with pytest.raises(embag.UnsupportedArray, match=r"weight \(float32 of shape \(10, \d\)\) has strides"):
        embag.embedding_bag(np.array([1]), weight, np.array([0]))


def test_strided_indices_are_refused_not_copied():
    indices = np.arange(10)[::2]
    with pytest.raises(embag.UnsupportedArray, match=r"input \(int64 of shape \(5,\)\) is not C-contiguous "
                                                     r"\(strides \(2,\)"):
        embag.embedding_bag(indices, np.ones((10, 4), np.float32), np.array([0]))


@pytest.mark.parametrize("what, call", [
    ("weight", lambda: embag.embedding_bag(np.array([1]), np.ones((4, 4)), np.array([0]))),
    ("input", lambda: embag.embedding_bag(np.array([1], np.int16), np.ones((4, 4), np.float32), np.array([0]))),
    ("offsets", lambda: embag.embedding_bag(np.array([1]), np.ones((4, 4), np.float32), np.array([0.0]))),
    ("per_sample_weights", lambda: embag.embedding_bag(np.array([1]), np.ones((4, 4), np.float32), np.array([0]),
                                                       mode="sum", per_sample_weights=np.ones(1))),
])
def test_wrong_dtypes_are_named(what, call):
    with pytest.raises(embag.UnsupportedArray, match=f"^{what} must be .*, got (float64|int16)") as caught:
        call()
    assert isinstance(caught.value, TypeError) and caught.value.code == "unsupported_array"


@pytest.mark.parametrize("what", ["input", "weight", "offsets"])
def test_a_list_is_not_an_array(what):
    arrays = {"input": np.array([1]), "weight": np.ones((4, 4), np.float32), "offsets": np.array([0])}
    arrays[what] = arrays[what].tolist()
    with pytest.raises(embag.UnsupportedArray, match=f"embedding_bag: {what} must be a NumPy array or a CPU "
                                                     f"torch.Tensor .*, got list"):
        embag.embedding_bag(**arrays)


@pytest.mark.parametrize("what", ["input", "weight"])
def test_big_endian_arrays_are_refused_not_misread(what):
    # NumPy arrays are read from their own struct (not exported): the byte order must be read too
    arrays = {"input": np.array([1, 2]), "weight": np.arange(16, dtype=np.float32).reshape(4, 4),
              "offsets": np.array([0])}
    arrays[what] = arrays[what].astype(arrays[what].dtype.newbyteorder(">"))
    with pytest.raises(embag.UnsupportedArray, match=f"^{what} must be .*, got >(f4|i8)") as caught:
        embag.embedding_bag(mode="sum", **arrays)
    assert caught.value.code == "unsupported_array"


# Run in a child whose data limit (RLIMIT_DATA: heap and private writable mappings, where any copy
# would go) is 256 MiB above what it uses, against a 2 GiB table mapped read-only from a sparse
# .npy file: the call succeeds because nothing of the table is copied, and copying it fails.
MAPPED_TABLE_LARGER_THAN_THE_LIMIT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import embag
    rows, dim = 2 * 1024 * 1024, 256  # 2 GiB of float32
    path = sys.argv[1]
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, dim), np.float32))
    header["shape"] = (rows, dim)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.truncate(f.tell() + rows * dim * 4)  # a sparse file: zeros, no disk used
    weight = np.load(path, mmap_mode="r")
    indices = np.array([0, rows // 3, rows - 1, 12345]); offsets = np.array([0, 2])
    with open("/proc/self/status") as status:
        data_kib = next(int(line.split()[1]) for line in status if line.startswith("VmData"))
    limit = data_kib * 1024 + 256 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    out = embag.embedding_bag(indices, weight, offsets, mode="sum")
    assert out.shape == (2, dim) and not out.any()
    try:
        np.array(weight)
    except MemoryError:
        print("served a mapped table larger than the data limit; copying it failed")
    else:
        sys.exit("the data limit did not stop a copy of the table: this test proves nothing")
""")


def test_a_mapped_table_larger_than_the_data_limit_is_served(tmp_path):
    result = subprocess.run([sys.executable, "-c", MAPPED_TABLE_LARGER_THAN_THE_LIMIT, str(tmp_path / "big.npy")],
                            capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "copying it failed" in result.stdout
