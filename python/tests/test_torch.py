"""PyTorch: embag's functions on CPU tensors against torch.nn.functional, embag.nn's modules against
torch.nn's (forward, gradients, a model trained a few SGD steps with each), tensors read in place.
Skipped where torch is not importable (.ci/run installs Debian's python3-torch so CI runs it)."""
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import embag

torch = pytest.importorskip("torch")
import embag.nn  # noqa: E402
import embag.optim  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROWS, DIM = 40, 16


def test_importing_embag_does_not_import_torch():
    result = subprocess.run([sys.executable, "-c", "import sys, embag; print('torch' in sys.modules)"],
                            capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def bags(generator, include_last_offset=False):
    lengths = [3, 0, 5, 1, 4]
    indices = torch.randint(0, ROWS, (sum(lengths),), generator=generator)
    offsets = torch.tensor([0] + list(np.cumsum(lengths)[:None if include_last_offset else -1]))
    return indices, offsets


def test_functional_signatures_are_torchs():
    for ours, theirs in ((embag.embedding_bag, F.embedding_bag), (embag.embedding, F.embedding)):
        assert [(p.name, p.default) for p in inspect.signature(ours).parameters.values()] == \
            [(p.name, p.default) for p in inspect.signature(theirs).parameters.values()]


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("include_last_offset", [False, True])
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_functional_matches_torch(mode, include_last_offset, padding_idx):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(ROWS, DIM, generator=g)
    indices, offsets = bags(g, include_last_offset)
    indices[[0, 4]] = 2 if padding_idx == 2 else ROWS - 1
    kwargs = dict(mode=mode, include_last_offset=include_last_offset, padding_idx=padding_idx)
    ours = embag.embedding_bag(indices, weight, offsets, **kwargs)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, F.embedding_bag(indices, weight, offsets, **kwargs), rtol=1e-6, atol=1e-6)


def test_functional_matches_torch_on_2d_input_weights_and_int32():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(ROWS, DIM, generator=g)
    input = torch.randint(0, ROWS, (6, 3), generator=g, dtype=torch.int32)
    psw = torch.rand(6, 3, generator=g)
    torch.testing.assert_close(embag.embedding_bag(input, weight, mode="sum", per_sample_weights=psw),
                               F.embedding_bag(input, weight, mode="sum", per_sample_weights=psw))
    torch.testing.assert_close(embag.embedding(input, weight), F.embedding(input, weight))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_functional_reads_16_bit_weight_tensors(dtype):
    # embag._torch_nn takes float32 weights only and hands the others back to embag._embag
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(ROWS, DIM, generator=g).to(dtype)
    indices, offsets = bags(g, False)
    ours = embag.embedding_bag(indices, weight, offsets, mode="sum")
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, F.embedding_bag(indices, weight.float(), offsets, mode="sum"), rtol=1e-6,
                               atol=1e-5)


def test_max_norm_matches_torch_in_place():
    g = torch.Generator().manual_seed(3)
    ours = torch.randn(ROWS, DIM, generator=g) * 4
    theirs = ours.clone()
    indices, offsets = bags(g)
    out = embag.embedding_bag(indices, ours, offsets, max_norm=2.0, mode="sum")
    torch.testing.assert_close(out, F.embedding_bag(indices, theirs, offsets, max_norm=2.0, mode="sum"))
    torch.testing.assert_close(ours, theirs)


def test_tensors_are_read_in_place():
    weight = torch.randn(ROWS, DIM)
    indices, offsets = bags(torch.Generator().manual_seed(4))
    out = embag.embedding_bag(indices, weight, offsets)
    pointers = {t.data_ptr() for t in (weight, indices, offsets)}
    assert out.data_ptr() not in pointers and out.is_contiguous()
    # a weight with a row stride (a column slice) is read where it is; strided indices are refused
    wide = torch.randn(ROWS, DIM * 2)
    torch.testing.assert_close(embag.embedding_bag(indices, wide[:, :DIM], offsets),
                               F.embedding_bag(indices, wide[:, :DIM], offsets))
    with pytest.raises(embag.UnsupportedArray, match="input .* is not C-contiguous"):
        embag.embedding_bag(torch.arange(20)[::2], weight, torch.tensor([0]))
    with pytest.raises(embag.UnsupportedArray, match="weight must be a 2-D float32 table, got float64"):
        embag.embedding_bag(indices, weight.double(), offsets)


def test_a_mapped_table_tensor_is_not_copied(tmp_path):
    # as test_arrays' mapped table, handed over as a tensor sharing the mapping (torch.from_numpy)
    script = (
        "import resource, warnings, numpy as np, torch, embag\n"
        "rows, dim = 2 * 1024 * 1024, 256\n"
        f"path = {str(tmp_path / 'big.npy')!r}\n"
        "header = np.lib.format.header_data_from_array_1_0(np.zeros((1, dim), np.float32))\n"
        "header['shape'] = (rows, dim)\n"
        "f = open(path, 'wb'); np.lib.format.write_array_header_1_0(f, header)\n"
        "f.truncate(f.tell() + rows * dim * 4); f.close()\n"
        "warnings.simplefilter('ignore')  # from_numpy warns that the mapping is read-only\n"
        "weight = torch.from_numpy(np.load(path, mmap_mode='r'))\n"
        "status = open('/proc/self/status').read().split('VmData:')[1]\n"
        "limit = int(status.split()[0]) * 1024 + 256 * 1024 * 1024\n"
        "resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))\n"
        "out = embag.embedding_bag(torch.tensor([0, rows - 1, 5]), weight, torch.tensor([0, 1]))\n"
        "assert out.shape == (2, dim) and not out.any()\n"
        "try:\n"
        "    weight.clone()\n"
        "except RuntimeError:\n"
        "    print('served; copying it failed')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "copying it failed" in result.stdout


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_module_gradients_match_torch(mode, sparse, padding_idx):
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(ROWS, DIM, generator=g)
    indices, offsets = bags(g)
    indices[1] = 2
    ours = embag.nn.EmbeddingBag.from_pretrained(weight, freeze=False, mode=mode, sparse=sparse,
                                                 padding_idx=padding_idx)
    # torch has no sparse gradient for max (embag has): compare with its dense one there
    theirs = torch.nn.EmbeddingBag.from_pretrained(weight, freeze=False, mode=mode, sparse=sparse and mode != "max",
                                                   padding_idx=padding_idx)
    assert isinstance(ours, torch.nn.EmbeddingBag) and type(ours) is embag.nn.EmbeddingBag
    grad_output = torch.randn(5, DIM, generator=g)
    (ours(indices, offsets) * grad_output).sum().backward()
    (theirs(indices, offsets) * grad_output).sum().backward()
    assert ours.weight.grad.is_sparse == sparse
    torch.testing.assert_close(ours.weight.grad.to_dense(), theirs.weight.grad.to_dense(), rtol=1e-5, atol=1e-6)
    if sparse:
        # made without torch's index check (embag.nn._sparse_gradient): the rows must be valid as they are
        rows = ours.weight.grad._indices()[0]
        assert torch.equal(rows, torch.unique(rows)) and 0 <= rows.min() and rows.max() < ROWS
        assert torch.equal(ours.weight.grad.coalesce()._indices()[0], rows)


@pytest.mark.parametrize("layout", ["offsets", "include_last_offset", "2-D input", "int32", "weights", "mean"])
def test_one_index_bags_have_torchs_sparse_gradient(layout):
    """Bags of one index each: the gradient is torch's own (uncoalesced, the input's rows in order,
    grad_output's rows as values), not embag's sorted unique rows (embag.nn._one_index_bags_gradient)."""
    g = torch.Generator().manual_seed(13)
    weight = torch.randn(ROWS, DIM, generator=g)
    indices = torch.randint(0, ROWS, (12,), generator=g)
    indices[5] = indices[2]  # a row twice: kept twice, as torch keeps it
    offsets = torch.arange(12)
    args, options, forward_options = (indices, offsets), {"mode": "sum"}, {}
    if layout == "include_last_offset":
        args, options = (indices, torch.arange(13)), {"mode": "sum", "include_last_offset": True}
    elif layout == "2-D input":
        args = (indices.reshape(12, 1),)
    elif layout == "int32":
        args = (indices.int(), offsets.int())
    elif layout == "weights":
        forward_options = {"per_sample_weights": torch.rand(12, generator=g)}
    elif layout == "mean":
        options = {"mode": "mean"}
    grads = []
    for module in (embag.nn.EmbeddingBag, torch.nn.EmbeddingBag):
        bag = module.from_pretrained(weight, freeze=False, sparse=True, **options)
        out = bag(*args, **forward_options)
        (out * torch.arange(out.numel(), dtype=torch.float32).reshape(out.shape)).sum().backward()
        grads.append(bag.weight.grad)
    ours, theirs = grads
    assert torch.equal(ours._indices(), theirs._indices())
    assert torch.equal(ours._indices()[0], indices)
    torch.testing.assert_close(ours._values(), theirs._values(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("case", ["two indices in a bag", "an empty bag", "as many bags as indices, one empty",
                                  "padding_idx", "scale_grad_by_freq"])
def test_other_bags_keep_embags_coalesced_gradient(case):
    g = torch.Generator().manual_seed(14)
    weight = torch.randn(ROWS, DIM, generator=g)
    indices, offsets, options = torch.randint(0, ROWS, (6,), generator=g), torch.arange(6), {}
    if case == "two indices in a bag":
        offsets = torch.tensor([0, 1, 3, 4, 5])
    elif case == "an empty bag":
        offsets = torch.tensor([0, 1, 1, 2, 3, 4, 5])
    elif case == "as many bags as indices, one empty":  # and one of two: the count alone would pass them
        offsets = torch.tensor([0, 1, 1, 3, 4, 5])
    elif case == "padding_idx":
        options = {"padding_idx": int(indices[0])}
    else:
        options = {"scale_grad_by_freq": True}
    grads = []
    for module in (embag.nn.EmbeddingBag, torch.nn.EmbeddingBag):
        # torch has no sparse gradient scaled by frequency (embag has): its dense one there
        sparse = module is embag.nn.EmbeddingBag or case != "scale_grad_by_freq"
        bag = module.from_pretrained(weight, freeze=False, mode="sum", sparse=sparse, **options)
        bag(indices, offsets).sum().backward()
        grads.append(bag.weight.grad)
    assert torch.equal(grads[0]._indices()[0], torch.unique(grads[0]._indices()[0]))
    torch.testing.assert_close(grads[0].to_dense(), grads[1].to_dense(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("layout", ["2-D input", "include_last_offset"])
def test_module_gradients_match_torch_on_each_bag_layout(layout, sparse):
    # the module takes the bags' layout once, in forward, for both passes
    g = torch.Generator().manual_seed(9)
    weight = torch.randn(ROWS, DIM, generator=g)
    if layout == "2-D input":
        args, options = (torch.randint(0, ROWS, (4, 3), generator=g),), {}
    else:
        args, options = bags(g, include_last_offset=True), {"include_last_offset": True}
    grads = []
    for module in (embag.nn.EmbeddingBag, torch.nn.EmbeddingBag):
        bag = module.from_pretrained(weight, freeze=False, mode="mean", sparse=sparse, **options)
        out = bag(*args)
        (out * torch.arange(out.numel(), dtype=torch.float32).reshape(out.shape)).sum().backward()
        grads.append(bag.weight.grad.to_dense())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
def test_module_gradient_of_empty_fixed_length_bags_is_zero(sparse):
    # B bags of L = 0 (torch refuses a 2-D input of no columns): no row gets a gradient
    bag = embag.nn.EmbeddingBag(ROWS, DIM, mode="sum", sparse=sparse)
    out = bag(torch.zeros((3, 0), dtype=torch.int64))
    assert torch.equal(out, torch.zeros(3, DIM))
    out.sum().backward()
    assert torch.equal(bag.weight.grad.to_dense(), torch.zeros(ROWS, DIM))


def test_sparse_gradients_come_back_as_the_callers_array_type():
    g = torch.Generator().manual_seed(10)
    indices, offsets = bags(g)
    grad_output = torch.randn(5, DIM, generator=g)
    for args in ((grad_output, indices), (grad_output.numpy(), indices), (grad_output, indices.numpy())):
        rows, values = embag.embedding_bag_backward(args[0], args[1], ROWS, offsets.numpy(), mode="sum", sparse=True)
        assert type(rows) is torch.Tensor and type(values) is torch.Tensor
        assert rows.dtype == torch.int64 and values.shape == (len(rows), DIM)
    rows, values = embag.embedding_bag_backward(grad_output.numpy(), indices.numpy(), ROWS, offsets.numpy(),
                                                mode="sum", sparse=True)
    assert type(rows) is np.ndarray and type(values) is np.ndarray
    rows, values = embag.embedding_backward(grad_output, indices[:5], ROWS, sparse=True)
    assert type(rows) is torch.Tensor and type(values) is torch.Tensor


def test_outputs_made_in_kept_memory_are_the_callers_array_type():
    g = torch.Generator().manual_seed(11)
    indices, offsets = bags(g)
    weight, psw = torch.randn(ROWS, DIM, generator=g), torch.rand(len(indices), generator=g)
    for args in ((indices, weight), (indices.numpy(), weight), (indices, weight.numpy())):
        (out,) = embag.embedding_bags([{"input": args[0], "weight": args[1], "offsets": offsets, "mode": "sum"}])
        assert type(out) is torch.Tensor and out.shape == (len(offsets), DIM)
        grad = embag.per_sample_weights_grad(torch.ones(len(offsets), DIM), args[1], args[0], psw, offsets)
        assert type(grad) is torch.Tensor and grad.shape == indices.shape
    (out,) = embag.embedding_bags([{"input": indices.numpy(), "weight": weight.numpy(), "offsets": offsets.numpy()}])
    assert type(out) is np.ndarray


def _resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("path", ["functional on tensors", "functional on NumPy arrays", "module"])
def test_a_large_dense_gradient_costs_only_the_memory_of_its_rows_written(path):
    """A dense gradient is mostly zeros: a large one is made of fresh zero pages (zeroed_memory.hpp),
    not written with zeros as torch.zeros does (512 MB took 390 ms), so a gradient of 256 MiB
    touched by three bags costs a few huge pages of resident memory, not 256 MiB."""
    rows, dim = 1 << 19, 128  # 256 MiB of float32
    indices, offsets = torch.tensor([5, rows - 1, 5, 300000]), torch.tensor([0, 1, 3])
    grad_output = torch.arange(3 * dim, dtype=torch.float32).reshape(3, dim)
    weight = torch.empty(rows, dim)  # not written: its pages are not resident either
    before = _resident_bytes()
    if path == "module":
        bag = embag.nn.EmbeddingBag.from_pretrained(weight, freeze=False, mode="sum")
        bag(indices, offsets).backward(grad_output)
        grad = bag.weight.grad
    elif path == "functional on tensors":
        grad = embag.embedding_bag_backward(grad_output, indices, rows, offsets, mode="sum")
    else:
        grad = torch.from_numpy(embag.embedding_bag_backward(grad_output.numpy(), indices.numpy(), rows,
                                                             offsets.numpy(), mode="sum"))
    grown = _resident_bytes() - before
    assert grown < 64 << 20, f"{grown >> 20} MiB resident for a gradient of 3 bags"
    assert grad.shape == (rows, dim)
    torch.testing.assert_close(grad[5], grad_output[0] + grad_output[1], rtol=0, atol=0)
    torch.testing.assert_close(grad[rows - 1], grad_output[1], rtol=0, atol=0)
    torch.testing.assert_close(grad[300000], grad_output[2], rtol=0, atol=0)
    assert not grad[:5].any() and not grad[6:300000].any() and not grad[300001:rows - 1].any()


def test_a_tensor_output_still_seen_through_a_view_is_not_reused():
    g = torch.Generator().manual_seed(12)
    weight = torch.randn(ROWS, DIM, generator=g)
    indices, offsets = torch.randint(0, ROWS, (4096,), generator=g), torch.arange(4096)
    out = embag.embedding_bag(indices, weight, offsets, mode="sum")
    view, expected = out[1:], out[1:].clone()
    del out
    for _ in range(3):
        other = embag.embedding_bag(indices.flip(0), weight, offsets, mode="sum")
        assert other.data_ptr() != view.data_ptr() - DIM * 4
    assert torch.equal(view, expected)


def test_per_sample_weights_gradient_matches_torch():
    g = torch.Generator().manual_seed(6)
    weight = torch.randn(ROWS, DIM, generator=g)
    indices, offsets = bags(g)
    grads = []
    for module in (embag.nn.EmbeddingBag, torch.nn.EmbeddingBag):
        bag = module.from_pretrained(weight, freeze=False, mode="sum")
        psw = torch.linspace(0.5, 2.0, indices.numel()).requires_grad_()
        bag(indices, offsets, per_sample_weights=psw).pow(2).sum().backward()
        grads.append((bag.weight.grad, psw.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5)


def test_embedding_module_matches_torch():
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(ROWS, DIM, generator=g)
    input = torch.randint(0, ROWS, (4, 6), generator=g)
    input[0, 0] = 3
    for sparse in (False, True):
        ours = embag.nn.Embedding.from_pretrained(weight, freeze=False, padding_idx=3, sparse=sparse)
        theirs = torch.nn.Embedding.from_pretrained(weight, freeze=False, padding_idx=3, sparse=sparse)
        out_ours, out_theirs = ours(input), theirs(input)
        torch.testing.assert_close(out_ours, out_theirs, rtol=0, atol=0)
        out_ours.pow(2).sum().backward()
        out_theirs.pow(2).sum().backward()
        torch.testing.assert_close(ours.weight.grad.to_dense(), theirs.weight.grad.to_dense())


@pytest.mark.parametrize("padding_idx", [None, 3])
def test_embedding_modules_sparse_gradient_is_torchs_without_padding(padding_idx):
    # each index a bag of its own: without padding_idx, torch's form (the input's rows in order,
    # a row repeated as often as it is looked up); with it, embag's sorted unique rows
    g = torch.Generator().manual_seed(15)
    weight = torch.randn(ROWS, DIM, generator=g)
    input = torch.randint(0, ROWS, (3, 5), generator=g)
    input[1, 2] = input[0, 0] = 3
    grads = []
    for module in (embag.nn.Embedding, torch.nn.Embedding):
        embedding = module.from_pretrained(weight, freeze=False, padding_idx=padding_idx, sparse=True)
        out = embedding(input)
        (out * torch.arange(out.numel(), dtype=torch.float32).reshape(out.shape)).sum().backward()
        grads.append(embedding.weight.grad)
    ours, theirs = grads
    rows = ours._indices()[0]
    if padding_idx is None:
        assert torch.equal(rows, input.reshape(-1)) and torch.equal(ours._indices(), theirs._indices())
        torch.testing.assert_close(ours._values(), theirs._values(), rtol=1e-6, atol=0)
    else:
        assert torch.equal(rows, torch.unique(rows))
    torch.testing.assert_close(ours.to_dense(), theirs.to_dense(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("module", ["Embedding", "EmbeddingBag"])
def test_sparse_gradient_of_no_indices_is_empty_as_torchs(module):
    # autograd hands an empty gradient with strides (0, 0): read as a table of no rows
    args = (torch.zeros(0, dtype=torch.int64),) * (1 if module == "Embedding" else 2)
    grads = []
    for namespace in (embag.nn, torch.nn):
        layer = getattr(namespace, module)(ROWS, DIM, sparse=True)
        layer(*args).sum().backward()
        grads.append(layer.weight.grad)
    assert grads[0]._indices().shape == grads[1]._indices().shape == (1, 0)
    assert grads[0]._values().shape == grads[1]._values().shape == (0, DIM)


def test_embedding_bag_runs_as_a_cpp_autograd_node():
    # embag._torch_nn, built where torch's C++ headers are: CI installs them (libtorch-dev) with torch
    assert embag.nn._torch_nn is not None, "embag was built without torch's C++ headers (libtorch-dev)"
    bag = embag.nn.EmbeddingBag(ROWS, DIM, mode="sum", sparse=True)
    out = bag(torch.tensor([1, 2, 3]), torch.tensor([0, 2]))
    assert "CppNode" in out.grad_fn.name() and "embedding_bag_node" in out.grad_fn.name()
    # the functional API reads tensors through the same module
    embag.embedding_bag(torch.tensor([1, 2, 3]), bag.weight.detach(), torch.tensor([0, 2]))
    assert embag._torch_ext is embag.nn._torch_nn


def test_a_lookup_on_tensors_pads_as_on_numpy_arrays():
    # the functional API's mode 'none' zeroes the padding row on both array types; only the module
    # Embedding returns it as it is (torch's Embedding), and that is decided in its node
    weight, indices, offsets = torch.randn(ROWS, DIM), torch.tensor([1, 3, 5]), torch.tensor([0, 1, 2])
    on_tensors = embag.embedding_bag(indices, weight, offsets, mode="none", padding_idx=3)
    on_arrays = embag.embedding_bag(indices.numpy(), weight.numpy(), offsets.numpy(), mode="none", padding_idx=3)
    assert torch.equal(on_tensors, torch.from_numpy(on_arrays))
    assert not on_tensors[1].any()
    lookup = embag.nn.Embedding.from_pretrained(weight, padding_idx=3)
    assert torch.equal(lookup(indices), F.embedding(indices, weight))

def test_embedding_runs_as_the_same_node_and_its_sparse_gradient_is_torchs_form():
    assert embag.nn._torch_nn is not None, "embag was built without torch's C++ headers (libtorch-dev)"
    lookup = embag.nn.Embedding(ROWS, DIM, sparse=True)
    input = torch.tensor([[1, 7], [7, 3]])
    out = lookup(input)
    assert out.shape == (2, 2, DIM)
    assert "embedding_bag_node" in out.grad_fn.name()  # the input's shape from the node itself, no view node
    grad_output = torch.randn(2, 2, DIM)
    out.backward(grad_output)
    # torch's own form: a row per index, uncoalesced, the values grad_output's rows (a view, no copy)
    grad = lookup.weight.grad
    assert not grad.is_coalesced()
    assert torch.equal(grad._indices(), input.reshape(1, -1))
    assert grad._values().data_ptr() == grad_output.data_ptr()
    reference = torch.nn.Embedding.from_pretrained(lookup.weight.detach().clone(), freeze=False, sparse=True)
    reference(input).backward(grad_output)
    assert torch.equal(grad.to_dense(), reference.weight.grad.to_dense())


def test_tensor_outputs_memory_is_kept_under_the_buffer_cache_limit():
    # embag._torch_nn's outputs (the functional API on tensors, embag.nn's) reuse released memory too
    weight = torch.randn(ROWS, DIM)
    indices, offsets = bags(torch.Generator().manual_seed(5))
    previous = embag.set_buffer_cache_limit(1 << 30)
    try:
        out = embag.embedding_bag(indices, weight, offsets)
        kept, pointer = embag.buffer_cache_bytes(), out.data_ptr()
        del out
        assert embag.buffer_cache_bytes() > kept
        again = embag.embedding_bag(indices, weight, offsets)
        assert again.data_ptr() == pointer
        del again
        embag.set_buffer_cache_limit(0)
        assert embag.buffer_cache_bytes() == 0
    finally:
        embag.set_buffer_cache_limit(previous)


def test_the_cpp_nodes_errors_are_embags():
    bag = embag.nn.EmbeddingBag(ROWS, DIM, mode="sum")
    with pytest.raises(embag.IndexOutOfRange, match=rf"indices\[1\] = {ROWS} is out of range \[0, {ROWS}\)") as raised:
        bag(torch.tensor([1, ROWS]), torch.tensor([0]))
    assert raised.value.code == "index_out_of_range"
    with pytest.raises(embag.UnsupportedArray, match=r"input \(int64 of shape \(10,\)\) is not C-contiguous"):
        bag(torch.arange(20)[::2], torch.tensor([0]))
    with pytest.raises(embag.UnsupportedArray, match=r"per_sample_weights must be float32, got float64 of shape \(2,\)"):
        bag(torch.tensor([1, 2]), torch.tensor([0]), per_sample_weights=torch.tensor([1.0, 2.0], dtype=torch.float64))
    with pytest.raises(embag.UnsupportedArray, match=r"input must be int32 or int64, got int16 of shape \(2,\)"):
        bag(torch.tensor([1, 2], dtype=torch.int16), torch.tensor([0]))
    with pytest.raises(embag.InvalidArgument, match="mode = 'median' is not one of"):
        embag.nn.EmbeddingBag(ROWS, DIM, mode="median")(torch.tensor([1, 2]), torch.tensor([0]))
    # torch's module takes tensors only (it fails inside, on `.dim()`): the error names the array
    for name, args in (("offsets", (torch.tensor([1, 2]), np.array([0]))),
                       ("input", (np.array([1, 2]), torch.tensor([0]))),
                       ("per_sample_weights", (torch.tensor([1, 2]), torch.tensor([0]), np.ones(2, np.float32)))):
        with pytest.raises(TypeError, match=rf"embag.nn.EmbeddingBag: {name} must be a torch.Tensor, .* not numpy.ndarray"):
            bag(*args)
    with pytest.raises(TypeError, match=r"embag.nn.Embedding: input must be a torch.Tensor, .* not numpy.ndarray"):
        embag.nn.Embedding(ROWS, DIM)(np.array([1, 2]))
    fused = embag.nn.EmbeddingBag(ROWS, DIM, mode="sum")
    embag.optim.SGD(fused, lr=0.1)  # trained through the Python Function
    with pytest.raises(TypeError, match=r"embag.nn.EmbeddingBag: offsets must be a torch.Tensor"):
        fused(torch.tensor([1, 2]), np.array([0]))


@pytest.mark.parametrize("module", ["Embedding", "EmbeddingBag"])
def test_a_modules_weight_must_be_one_embag_can_give_a_gradient(module):
    args = (torch.tensor([1, 2]),) if module == "Embedding" else (torch.tensor([1, 2]), torch.tensor([0]))
    layer = getattr(embag.nn, module)(ROWS, DIM)
    with torch.no_grad():
        layer.weight.data = layer.weight.data.half()
    with pytest.raises(embag.UnsupportedArray, match="a torch.float16 weight trains only with an embag.optim optimizer"):
        layer(*args)
    layer.weight.requires_grad_(False)  # frozen: read in 16 bits
    torch.testing.assert_close(layer(*args), getattr(torch.nn, module).from_pretrained(layer.weight.float())(*args),
                               rtol=1e-3, atol=1e-3)
    layer.weight.data = layer.weight.data.double()
    with pytest.raises(embag.UnsupportedArray, match="weight must be a float32 CPU tensor, got torch.float64"):
        layer(*args)


class Model(torch.nn.Module):
    def __init__(self, bag_module, sparse):
        super().__init__()
        self.bags = bag_module(ROWS, DIM, mode="mean", sparse=sparse)
        self.top = torch.nn.Linear(DIM, 1)

    def forward(self, indices, offsets):
        return self.top(self.bags(indices, offsets)).squeeze(1)


@pytest.mark.parametrize("sparse", [False, True])
def test_a_model_swapping_in_embag_trains_to_torchs_weights(sparse):
    trained = []
    for bag_module in (torch.nn.EmbeddingBag, embag.nn.EmbeddingBag):
        torch.manual_seed(8)  # same initial weights for both models
        model = Model(bag_module, sparse)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(9)
        for _ in range(5):
            indices, offsets = bags(g)
            target = torch.randn(5, generator=g)
            optimiser.zero_grad()
            torch.nn.functional.mse_loss(model(indices, offsets), target).backward()
            optimiser.step()
        trained.append(model.state_dict())
    torch.manual_seed(8)
    initial = Model(torch.nn.EmbeddingBag, sparse).state_dict()  # the same seed's weights, untrained
    assert not torch.equal(trained[0]["bags.weight"], initial["bags.weight"])  # training moved them
    for name in trained[0]:
        torch.testing.assert_close(trained[1][name], trained[0][name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", ["EmbeddingBag", "Embedding"])
def test_modules_with_max_norm_renormalise_their_weight_as_torch(module):
    g = torch.Generator().manual_seed(10)
    weight = torch.randn(ROWS, DIM, generator=g) * 3
    input = torch.randint(0, ROWS, (4, 5), generator=g)
    ours = getattr(embag.nn, module).from_pretrained(weight.clone(), freeze=False, max_norm=1.0)
    theirs = getattr(torch.nn, module).from_pretrained(weight.clone(), freeze=False, max_norm=1.0)
    out_ours, out_theirs = ours(input), theirs(input)
    torch.testing.assert_close(out_ours, out_theirs)
    torch.testing.assert_close(ours.weight, theirs.weight)  # the referenced rows rescaled in place
    assert not torch.equal(ours.weight, weight)
    out_ours.sum().backward()
    out_theirs.sum().backward()
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)


def test_empty_tensors_are_read():
    # torch exports an empty tensor's strides as it likes ((1, 1) for 0 x 3): nothing to refuse
    weight = torch.randn(ROWS, DIM)
    assert embag.embedding(torch.zeros(0, 3, dtype=torch.long), weight).shape == (0, 3, DIM)
    out = embag.embedding_bag(torch.zeros(0, dtype=torch.long), weight, torch.tensor([0, 0]))
    assert torch.equal(out, torch.zeros(2, DIM))


def test_tensors_are_read_through_their_own_layout():
    # the extension reads a tensor's data_ptr(), shape, stride() and dtype itself (no export): each
    # case here gives wrong numbers rather than an error if one of them is misread
    g = torch.Generator().manual_seed(11)
    weight = torch.randn(ROWS, DIM, generator=g)
    indices, offsets = bags(g)
    expected = F.embedding_bag(indices, weight, offsets, mode="sum")
    # views that start inside their storage: data_ptr() must include the storage offset
    late_indices = torch.cat([torch.tensor([ROWS - 1] * 3), indices])[3:]
    late_weight = torch.cat([torch.randn(3, DIM, generator=g), weight])[3:]
    assert late_indices.storage_offset() == 3 and late_weight.storage_offset() == 3 * DIM
    torch.testing.assert_close(embag.embedding_bag(late_indices, late_weight, offsets, mode="sum"), expected)
    # int32 indices and offsets are read as int32
    torch.testing.assert_close(embag.embedding_bag(indices.int(), weight, offsets.int(), mode="sum"), expected)
    # a one-row table (whose row stride does not matter) and a row-strided slice
    one = weight[3:4]
    torch.testing.assert_close(embag.embedding_bag(torch.tensor([0, 0]), one, torch.tensor([0]), mode="sum"), 2 * one)
    wide = torch.randn(ROWS, 3 * DIM, generator=g)
    torch.testing.assert_close(embag.embedding_bag(indices, wide[:, DIM:2 * DIM], offsets, mode="sum"),
                               F.embedding_bag(indices, wide[:, DIM:2 * DIM].contiguous(), offsets, mode="sum"))
    # a transposed table, strided or expanded indices: refused with their strides, never read wrongly
    with pytest.raises(embag.UnsupportedArray, match=rf"weight \(float32 of shape \({DIM}, {ROWS}\)\) has strides "
                                                     rf"\(1, {DIM}\)"):
        embag.embedding_bag(indices, weight.t(), offsets)
    with pytest.raises(embag.UnsupportedArray, match=r"input \(int64 of shape \(13,\)\) is not C-contiguous "
                                                     r"\(strides \(2,\)"):
        embag.embedding_bag((torch.arange(26) % ROWS)[::2], weight, offsets)
    with pytest.raises(embag.UnsupportedArray, match=r"offsets \(int64 of shape \(5,\)\) is not C-contiguous "
                                                     r"\(strides \(0,\)"):
        embag.embedding_bag(indices, weight, torch.tensor([0]).expand(5))
    # dtypes by name, the output's included
    with pytest.raises(embag.UnsupportedArray, match=r"input must be int32 or int64, got int16 of shape \(13,\)"):
        embag.embedding_bag(indices.short(), weight, offsets)
    with pytest.raises(embag.UnsupportedArray, match=r"weight must be a 2-D float32 table, got float64 of shape"):
        embag.embedding_bag(indices, weight.double(), offsets)
    # a negated view holds -x in memory; sparse and non-CPU tensors have no memory to read here
    with pytest.raises(embag.UnsupportedArray, match=r"weight is a negated view"):
        embag.embedding_bag(indices, torch._neg_view(weight), offsets)
    with pytest.raises(embag.UnsupportedArray, match=r"weight is a torch.sparse_coo tensor"):
        embag.embedding_bag(indices, weight.to_sparse(), offsets)
    with pytest.raises(embag.UnsupportedArray, match=r"weight is on meta; embag runs on the CPU"):
        embag.embedding_bag(indices, torch.empty(ROWS, DIM, device="meta"), offsets)
    # a weight that requires grad (an nn.Parameter) is read as it is
    torch.testing.assert_close(embag.embedding_bag(indices, torch.nn.Parameter(weight), offsets, mode="sum"),
                               expected)
