"""Compressed tables (embag.quantize, embag.Table.open mapped or copied), .npy tables, the table-batched
call, and the ISA and thread controls."""
import numpy as np
import pytest

import embag

ROWS, DIM = 300, 20


@pytest.fixture
def weight():
    return np.random.default_rng(3).standard_normal((ROWS, DIM)).astype(np.float32)


def bags():
    rng = np.random.default_rng(4)
    return rng.integers(0, ROWS, 64), np.array([0, 5, 5, 30, 63])


@pytest.mark.parametrize("dtype", ["f16", "bf16", "int8_rowwise", "int4_rowwise"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_a_quantized_table_reads_as_its_dequantized_rows(weight, dtype, mode):
    table = embag.quantize(weight, dtype)
    assert (table.rows, table.dim, table.dtype, table.mapped) == (ROWS, DIM, dtype, False)
    rows = table.dequantize()
    assert rows.shape == (ROWS, DIM)
    tolerance = {"f16": 1e-3, "bf16": 1e-2, "int8_rowwise": 0.02, "int4_rowwise": 0.3}[dtype]
    np.testing.assert_allclose(rows, weight, atol=tolerance * np.abs(weight).max())
    indices, offsets = bags()
    # bit for bit forward on dequantize(table), as quantize.hpp promises
    np.testing.assert_array_equal(embag.embedding_bag(indices, table, offsets, mode=mode),
                                  embag.embedding_bag(indices, rows, offsets, mode=mode))


def test_a_saved_table_opens_mapped_or_copied(weight, tmp_path):
    path = str(tmp_path / "t.embag")
    embag.quantize(weight, "int8_rowwise").save(path)
    mapped, copied = embag.Table.open(path), embag.Table.open(path, copy=True)
    assert mapped.mapped and not copied.mapped
    assert repr(mapped) == f"embag.Table(rows={ROWS}, dim={DIM}, dtype='int8_rowwise', mapped)"
    indices, offsets = bags()
    np.testing.assert_array_equal(embag.embedding_bag(indices, mapped, offsets),
                                  embag.embedding_bag(indices, copied, offsets))


def test_a_compressed_table_refuses_max_norm(weight):
    with pytest.raises(embag.InvalidArgument, match="max_norm"):
        embag.embedding_bag(np.array([1]), embag.quantize(weight, "f16"), np.array([0]), max_norm=1.0)


def test_an_npy_table_is_mapped_in_place(weight, tmp_path):
    np.save(tmp_path / "w.npy", weight)
    indices, offsets = bags()
    np.testing.assert_array_equal(embag.embedding_bag(indices, np.load(tmp_path / "w.npy", mmap_mode="r"), offsets),
                                  embag.embedding_bag(indices, weight, offsets))


def test_batched_call_is_each_tables_own_call(weight):
    rng = np.random.default_rng(5)
    small = rng.standard_normal((7, 3)).astype(np.float32)
    indices, offsets = bags()
    lookups = [dict(input=indices, weight=weight, offsets=offsets, mode="sum"),
               dict(input=rng.integers(0, 7, (10, 2)), weight=small, mode="max"),
               dict(input=indices, weight=embag.quantize(weight, "int4_rowwise"), offsets=offsets, padding_idx=3)]
    outs = embag.embedding_bags(lookups)
    for lookup, out in zip(lookups, outs):
        np.testing.assert_array_equal(out, embag.embedding_bag(**lookup))


def test_batched_call_names_the_table_at_fault(weight):
    indices, offsets = bags()
    lookups = [dict(input=indices, weight=weight, offsets=offsets), dict(input=np.array([ROWS]), weight=weight,
                                                                         offsets=np.array([0]))]
    with pytest.raises(embag.IndexOutOfRange, match=r"tables\[1\]"):
        embag.embedding_bags(lookups)


def test_every_isa_and_thread_count_gives_the_same_bits(weight):
    isas = embag.available_isas()
    assert isas[0] == "reference" and embag.active_isa() == isas[-1]
    rng = np.random.default_rng(6)
    indices, offsets = rng.integers(0, ROWS, 5000), np.arange(0, 5000, 25)
    expected = embag.embedding_bag(indices, weight, offsets, mode="mean")
    try:
        for isa in isas:
            embag.force_isa(isa)
            assert embag.active_isa() == isa
            for threads in (1, 2):
                embag.set_num_threads(threads)
                assert embag.get_num_threads() == threads
                np.testing.assert_array_equal(embag.embedding_bag(indices, weight, offsets, mode="mean"), expected)
    finally:
        embag.force_isa(isas[-1])
        embag.set_num_threads(0)
