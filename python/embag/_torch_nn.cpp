// embag._torch_nn: embag.nn.EmbeddingBag's forward and backward as one C++ autograd node
// (torch::autograd::Function) over the library, built where torch's C++ headers are (Debian's
// libtorch-dev). embag._embag reads a torch tensor through its Python attributes and runs the
// backward from a Python autograd.Function; on calls of a tenth of a millisecond (R = 1M, D = 128,
// 2,048 bags of one index) that Python, in the caches the kernel has just emptied, was most of
// what the training step cost beyond torch's own: through this node it took 0.235-0.238 ms on 1
// thread where the Python Function took 0.260-0.263 and torch 0.268-0.277 (README, "From Python").
//
// The module passes its bags as embag/__init__.py's _bags made them (validated shapes: offsets or
// a fixed length), every option, and embag.get_num_threads(); the library validates the rest and
// its errors reach Python as embag._embag's classes (its pybind11 translator is shared by every
// module of this pybind11 build). Fused optimizers keep embag.nn's Python Function: their
// backward is an update in Python objects' state.
#include <torch/extension.h>

#include <cstdint>
#include <mutex>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "embag/embag.hpp"
#include "entry_points.hpp"
#include "released_memory.hpp"
#include "zeroed_memory.hpp"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// An exception of embag._embag's class `name` (embag.UnsupportedArray, embag.InvalidArgument),
// with its `code`, as embag._embag raises them.
[[noreturn]] void raise(const char* name, const char* code, const std::string& message) {
  pybind11::gil_scoped_acquire held;
  pybind11::object cls = pybind11::module_::import("embag._embag").attr(name);
  pybind11::object exception = cls(message);
  exception.attr("code") = code;
  PyErr_SetObject(cls.ptr(), exception.ptr());
  throw pybind11::error_already_set();
}

[[noreturn]] void refuse(const std::string& message) { raise("UnsupportedArray", "unsupported_array", message); }

std::string tuple_text(at::IntArrayRef values) { return embag_python::tuple_text({values.data(), values.size()}); }

// NumPy's and torch's Python names (embag._embag's messages), not c10's ("Long").
std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(type);
  }
}

std::string describe(const at::Tensor& t) { return dtype_name(t.scalar_type()) + " of shape " + tuple_text(t.sizes()); }

// A tensor the library reads in place: on the CPU, dense, not a lazily negated view.
void check_readable(const at::Tensor& t, const char* what) {
  if (t.layout() != at::kStrided)
    refuse(std::string(what) + " is a " + (t.layout() == at::kSparse ? std::string("torch.sparse_coo") : c10::str(t.layout())) +
           " tensor; embag reads dense (torch.strided) tensors");
  if (!t.is_cpu()) refuse(std::string(what) + " is on " + t.device().str() + "; embag runs on the CPU: move it with .cpu()");
  if (t.is_neg())
    refuse(std::string(what) + " is a negated view (Tensor.is_neg()): its memory holds the values negated; pass "
           "Tensor.resolve_neg() to materialise it");
}

// embag._embag's refusal of an array it would have to copy.
void refuse_strided(const at::Tensor& t, const char* what) {
  if (t.is_contiguous()) return;
  refuse(std::string(what) + " (" + describe(t) + ") is not C-contiguous (strides " + tuple_text(t.strides()) +
         " in elements): embag reads arrays in place and never copies them silently; pass a contiguous copy "
         "(numpy.ascontiguousarray, Tensor.contiguous) if a copy is what you want");
}

// Indices or offsets: int32 or int64, one contiguous block.
embag::index_span index_array(const at::Tensor& t, const char* what) {
  check_readable(t, what);
  if (t.scalar_type() != at::kInt && t.scalar_type() != at::kLong)
    refuse(std::string(what) + " must be int32 or int64, got " + describe(t));
  refuse_strided(t, what);
  return {t.data_ptr(), t.numel(), t.scalar_type() == at::kInt ? embag::index_type::i32 : embag::index_type::i64};
}

std::span<const float> float_array(const c10::optional<at::Tensor>& t, const char* what) {
  if (!t) return {};
  check_readable(*t, what);
  if (t->scalar_type() != at::kFloat) refuse(std::string(what) + " must be float32, got " + describe(*t));
  refuse_strided(*t, what);
  return {t->data_ptr<float>(), static_cast<std::size_t>(t->numel())};
}

// The weight: a 2-D float32 table whose rows may be strided (a column slice of a wider table).
embag::table_view<float> table_of(const at::Tensor& w) {
  check_readable(w, "weight");
  if (w.scalar_type() != at::kFloat || w.dim() != 2) refuse("weight must be a 2-D float32 table, got " + describe(w));
  const bool rows_dense = w.size(1) == 1 || w.stride(1) == 1;
  const bool rows_forward = w.size(0) <= 1 || w.stride(0) >= w.size(1);
  if (w.numel() != 0 && (!rows_dense || !rows_forward))
    refuse("weight (" + describe(w) + ") has strides " + tuple_text(w.strides()) +
           " in elements: embag reads a table in place, which needs each row's elements adjacent and rows in "
           "increasing order (a row stride >= dim); pass numpy.ascontiguousarray / Tensor.contiguous() to copy it");
  return {w.data_ptr<float>(), w.size(0), w.size(1), w.size(0) <= 1 ? 0 : w.stride(0)};
}

// A tensor as rows of its last dimension (a lookup's output has the input's shape and dim).
embag::matrix_view<float> matrix_of(const at::Tensor& t) {
  const at::IntArrayRef sizes = t.sizes();
  return {t.data_ptr<float>(), c10::multiply_integers(sizes.begin(), sizes.end() - 1), sizes.back(), 0};
}

// The bags as the module describes them: offsets (1-D input) or a fixed length (2-D input).
embag::bags bags_of(const at::Tensor& input, const c10::optional<at::Tensor>& offsets, std::int64_t length,
                    const c10::optional<at::Tensor>& weights) {
  const embag::index_span indices = index_array(input, "input");
  const std::span<const float> w = float_array(weights, "per_sample_weights");
  if (offsets) return embag::bags::from_offsets(indices, index_array(*offsets, "offsets"), w);
  return embag::bags::fixed(indices, length, w);
}

// Memory of outputs whose tensors were freed, kept for the next calls' outputs, as embag._embag
// keeps its own (released_memory.hpp: fresh memory's page faults cost more than the kernels, and a
// 1 MB L = 1 output from torch's allocator cycled through more memory than L2 holds: the forward on
// tensors took 0.115-0.122 ms against 0.098-0.102 in kept memory, NumPy arrays' 0.100-0.108). A
// tensor's memory comes back when its last reference goes, on whichever thread that is
// (autograd's engine, or the caller's) and not always with the GIL: one lock for both pools and
// this module's byte count (embag.set_buffer_cache_limit sets its limit too).
struct kept_gradient {
  embag::sparse_gradient grad;
  std::size_t bytes() const { return grad.rows.capacity() * sizeof(std::int64_t) + grad.values.capacity() * sizeof(float); }
};

struct kept_memory {
  std::mutex lock;
  embag_python::released_pool<embag_python::output_block> outputs;
  embag_python::released_pool<kept_gradient> gradients;
};

kept_memory& kept() {
  static auto* memory = new kept_memory;  // never destroyed: a tensor may outlive the module
  return *memory;
}

// A dense gradient of zeros: a large one in fresh zero pages (zeroed_memory.hpp says why).
at::Tensor zeroed_gradient(std::int64_t rows, std::int64_t dim, const at::TensorOptions& options) {
  const std::size_t bytes = static_cast<std::size_t>(rows) * static_cast<std::size_t>(dim) * sizeof(float);
  if (bytes < embag_python::lazily_zeroed_from) return at::zeros({rows, dim}, options);
  void* data = embag_python::map_zeroed(bytes);  // std::bad_alloc: torch's out-of-memory error
  return torch::from_blob(data, {rows, dim}, [bytes](void* p) { embag_python::unmap_zeroed(p, bytes); }, options);
}

// An output's memory back to the pool, when its tensor's storage goes (on any thread).
void release_output(void* block) {
  kept_memory& memory = kept();
  std::lock_guard<std::mutex> hold(memory.lock);
  memory.outputs.release(static_cast<embag_python::output_block*>(block));
}

// A new float32 tensor of these sizes in kept memory. Made as at::from_blob makes one (a CPU
// TensorImpl over a storage whose DataPtr frees the memory), without its std::function deleter
// context and dispatch guard: this runs after every large call, on caches that call emptied.
at::Tensor new_output(at::IntArrayRef sizes) {
  const std::size_t bytes = static_cast<std::size_t>(c10::multiply_integers(sizes)) * sizeof(float);
  kept_memory& memory = kept();
  embag_python::output_block* block;
  {
    std::lock_guard<std::mutex> hold(memory.lock);
    block = memory.outputs.take([&](const embag_python::output_block& b) { return b.suits(bytes); });
  }
  if (block == nullptr) block = new embag_python::output_block(bytes);
  c10::Storage storage(c10::Storage::use_byte_size_t(), static_cast<std::int64_t>(bytes),
                       c10::DataPtr(block->data(), block, &release_output, c10::Device(c10::kCPU)),
                       /*allocator=*/nullptr, /*resizable=*/false);
  at::Tensor out = at::detail::make_tensor<c10::TensorImpl>(std::move(storage), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                            caffe2::TypeMeta::Make<float>());
  out.unsafeGetTensorImpl()->set_sizes_contiguous(sizes);
  return out;
}

// A sparse gradient whose vectors a freed one left (they only grow).
kept_gradient* new_gradient() {
  kept_memory& memory = kept();
  {
    std::lock_guard<std::mutex> hold(memory.lock);
    if (kept_gradient* grad = memory.gradients.take([](const kept_gradient&) { return true; })) return grad;
  }
  return new kept_gradient;
}

embag::workspace& thread_workspace() {
  thread_local embag::workspace scratch;
  return scratch;
}

// Rows of a matrix, each times its weight, into out, by the library's threads: the values of the
// sparse gradient of weighted one-index bags. Done as a forward over bags of one index each, bag
// b being row b: a torch mul there woke torch's OpenMP threads, whose spinning then held the core
// embag's second thread wanted (a torch copy_ of 2,048 rows of 128 took 0.26 ms on 2 threads).
// Called without the GIL; the positions 0, 1, ... are the thread's.
void weighted_rows(const float* rows, std::int64_t count, std::int64_t dim, std::span<const float> weights,
                   embag::matrix_view<float> out, const embag::options& sum) {
  thread_local std::vector<std::int64_t> positions;
  if (static_cast<std::int64_t>(positions.size()) < count) {
    positions.resize(static_cast<std::size_t>(count));
    std::iota(positions.begin(), positions.end(), std::int64_t{0});
  }
  embag::forward(embag::table_view<const float>{rows, count, dim, 0},
                 embag::bags::fixed(std::span<const std::int64_t>(positions.data(), static_cast<std::size_t>(count)), 1,
                                    weights),
                 sum, out, {}, &thread_workspace());
}

// Whether every bag holds one index, bag b being index b: offsets 0, 1, ..., B - 1 (or bags of
// length 1). Offsets forward accepted rise from 0, so they equal the positions only if no bag is
// empty or longer.
bool one_index_each(const at::Tensor& input, const c10::optional<at::Tensor>& offsets, std::int64_t length,
                    std::int64_t bags) {
  if (input.numel() != bags) return false;
  if (!offsets) return length == 1;
  if (offsets->numel() < bags) return false;
  auto each_bag_is_its_position = [bags](const auto* o) {
    for (std::int64_t b = 0; b < bags; ++b)
      if (o[b] != b) return false;
    return true;
  };
  return offsets->scalar_type() == at::kInt ? each_bag_is_its_position(offsets->data_ptr<std::int32_t>())
                                            : each_bag_is_its_position(offsets->data_ptr<std::int64_t>());
}

embag::options library_options(const std::string& mode, c10::optional<std::int64_t> padding_idx, bool include_last_offset,
                               bool scale_grad_by_freq, std::int64_t threads) {
  embag::options o;
  const auto m = embag::mode_from_string(mode);
  if (!m) raise("InvalidArgument", "invalid_option", "mode = '" + mode + "' is not one of 'sum', 'mean', 'max', 'sqrtn', 'none'");
  o.mode = *m;
  if (padding_idx) o.padding_idx = *padding_idx;
  o.include_last_offset = include_last_offset;
  o.scale_grad_by_freq = scale_grad_by_freq;
  o.execution.max_threads = static_cast<int>(threads);
  return o;
}

// embedding_bag's forward into new tensors: the output (bags x dim; for lookups the node passes
// the input's shape, rows_shape, to which dim is appended) and, with_argmax (mode max), the table
// row each maximum came from (what backward needs; undefined otherwise). max_norm rescales the
// referenced rows of the weight in place, as torch does.
std::pair<at::Tensor, at::Tensor> run_forward(const at::Tensor& weight, const at::Tensor& input,
                                              const c10::optional<at::Tensor>& offsets,
                                              const c10::optional<at::Tensor>& per_sample_weights, std::int64_t length,
                                              std::int64_t bags, const std::string& mode,
                                              c10::optional<std::int64_t> padding_idx, bool include_last_offset,
                                              c10::optional<double> max_norm, double norm_type, std::int64_t threads,
                                              bool with_argmax, c10::optional<at::IntArrayRef> rows_shape = c10::nullopt) {
  embag::options opts = library_options(mode, padding_idx, include_last_offset, false, threads);
  const embag::table_view<float> table = table_of(weight);
  const embag::bags batch = bags_of(input, offsets, length, per_sample_weights);
  std::vector<std::int64_t> sizes = rows_shape ? rows_shape->vec() : std::vector<std::int64_t>{bags};
  sizes.push_back(table.dim);
  at::Tensor out = new_output(sizes);
  at::Tensor argmax;
  std::span<std::int64_t> argmax_span;
  if (with_argmax) {
    argmax = at::empty({bags, table.dim}, at::TensorOptions().dtype(at::kLong));
    argmax_span = {argmax.data_ptr<std::int64_t>(), static_cast<std::size_t>(argmax.numel())};
  }
  if (max_norm) {
    opts.max_norm = static_cast<float>(*max_norm);
    opts.norm_type = static_cast<float>(norm_type);
    opts.max_norm_mode = embag::max_norm_flavour::in_place;  // torch's: the referenced rows rescaled
  }
  pybind11::gil_scoped_release unlocked;
  if (max_norm) embag::forward(table, batch, opts, matrix_of(out), argmax_span, &thread_workspace());
  else embag::forward(embag::table_view<const float>(table), batch, opts, matrix_of(out), argmax_span, &thread_workspace());
  return {out, argmax};
}

struct embedding_bag_node : torch::autograd::Function<embedding_bag_node> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor weight, at::Tensor input, c10::optional<at::Tensor> offsets,
                            c10::optional<at::Tensor> per_sample_weights, std::int64_t length, std::int64_t bags,
                            std::string mode, c10::optional<std::int64_t> padding_idx, bool include_last_offset,
                            c10::optional<double> max_norm, double norm_type, bool scale_grad_by_freq, bool sparse,
                            std::int64_t threads) {
    // Mode 'none' is embag.nn.Embedding's lookup: it returns the padding row as it is (torch's
    // Embedding), its padding_idx only keeps that row's gradient; and its output has the input's
    // shape and dim, no view node after this one (a view of its rows added 3 us to the forward of
    // a one-index lookup and 9 to its step's backward).
    const bool lookup = mode == "none";
    auto [out, argmax] = run_forward(weight, input, offsets, per_sample_weights, length, bags, mode,
                                     lookup ? c10::nullopt : padding_idx,
                                     include_last_offset, max_norm, norm_type, threads, mode == "max",
                                     lookup ? c10::optional<at::IntArrayRef>(input.sizes()) : c10::nullopt);
    ctx->save_for_backward({weight, input, offsets.value_or(at::Tensor()), per_sample_weights.value_or(at::Tensor()), argmax});
    ctx->saved_data["length"] = length;
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["padding_idx"] = padding_idx;
    ctx->saved_data["include_last_offset"] = include_last_offset;
    ctx->saved_data["scale_grad_by_freq"] = scale_grad_by_freq;
    ctx->saved_data["sparse"] = sparse;
    ctx->saved_data["threads"] = threads;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &weight = saved[0], &input = saved[1], &argmax = saved[4];
    const c10::optional<at::Tensor> offsets = saved[2].defined() ? c10::optional<at::Tensor>(saved[2]) : c10::nullopt;
    const c10::optional<at::Tensor> weights = saved[3].defined() ? c10::optional<at::Tensor>(saved[3]) : c10::nullopt;
    const std::int64_t length = ctx->saved_data["length"].toInt();
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const c10::optional<std::int64_t> padding_idx = ctx->saved_data["padding_idx"].toOptional<std::int64_t>();
    const bool scale_grad_by_freq = ctx->saved_data["scale_grad_by_freq"].toBool();
    const embag::options opts = library_options(mode, padding_idx, ctx->saved_data["include_last_offset"].toBool(),
                                                scale_grad_by_freq, ctx->saved_data["threads"].toInt());
    // autograd may hand an expanded (stride 0) gradient, as sum() does: B x D, never the table's size
    const at::Tensor dy = grads[0].contiguous();
    const embag::bags batch = bags_of(input, offsets, length, weights);
    const std::span<const std::int64_t> argmax_span =
        argmax.defined() ? std::span<const std::int64_t>(argmax.data_ptr<std::int64_t>(), static_cast<std::size_t>(argmax.numel()))
                         : std::span<const std::int64_t>();
    variable_list result(14);  // one per forward argument
    // needs_input_grad counts the tensors given: weight, input, then offsets and the weights if any
    if (weights && ctx->needs_input_grad(offsets ? 3 : 2)) {
      at::Tensor grad_weights = at::empty(weights->sizes(), dy.options());
      embag::per_sample_weights_grad(embag::table_view<const float>(table_of(weight)), batch, opts, matrix_of(dy),
                                     {grad_weights.data_ptr<float>(), static_cast<std::size_t>(grad_weights.numel())});
      result[3] = grad_weights;
    }
    if (!ctx->needs_input_grad(0)) return result;
    const std::int64_t rows = weight.size(0), dim = weight.size(1), bags = matrix_of(dy).rows;
    if (!ctx->saved_data["sparse"].toBool()) {
      at::Tensor grad = zeroed_gradient(rows, dim, dy.options());
      embag::backward_dense(batch, opts, matrix_of(dy), matrix_of(grad), argmax_span, &thread_workspace());
      result[0] = grad;
      return result;
    }
    if (opts.mode != embag::mode::max && !padding_idx && !scale_grad_by_freq && (!weights || opts.mode == embag::mode::sum) &&
        (opts.mode == embag::mode::none || one_index_each(input, offsets, length, bags))) {
      // torch's own form for lookups and bags of one index: one row per index, the input as it is
      // (uncoalesced), the values grad_output's rows (a view of them, as torch's Embedding gives:
      // copying them took the lookup's training step from 0.23 to 0.41 ms, R = 1M, D = 128, 2,048
      // indices), or with weights those rows times them (weighted_rows). Coalescing would sort
      // without summing anything.
      at::Tensor values = dy.view({bags, dim});
      if (weights) {
        values = new_output({bags, dim});
        const embag::options sum = library_options("sum", c10::nullopt, false, false, ctx->saved_data["threads"].toInt());
        weighted_rows(dy.data_ptr<float>(), bags, dim, batch.per_sample_weights, matrix_of(values), sum);
      }
      result[0] = at::_sparse_coo_tensor_unsafe(input.reshape({1, -1}).to(at::kLong), values, {rows, dim});
      return result;
    }
    // embag's form: the sorted unique rows, values in memory a released gradient left
    kept_gradient* kept_grad = new_gradient();
    embag::sparse_gradient& grad = kept_grad->grad;
    try {
      embag::backward_sparse(rows, batch, opts, matrix_of(dy), grad, argmax_span, &thread_workspace());
    } catch (...) {
      delete kept_grad;
      throw;
    }
    const auto unique_rows = static_cast<std::int64_t>(grad.rows.size());
    at::Tensor row_ids = at::empty({1, unique_rows}, at::TensorOptions().dtype(at::kLong));
    std::copy(grad.rows.begin(), grad.rows.end(), row_ids.data_ptr<std::int64_t>());
    at::Tensor values = at::from_blob(grad.values.data(), {unique_rows, dim}, [kept_grad](void*) {
      kept_memory& memory = kept();
      std::lock_guard<std::mutex> hold(memory.lock);
      memory.gradients.release(kept_grad);
    }, dy.options());
    result[0] = at::_sparse_coo_tensor_unsafe(row_ids, values, {rows, dim});
    return result;
  }
};

at::Tensor embedding_bag(at::Tensor weight, at::Tensor input, c10::optional<at::Tensor> offsets,
                         c10::optional<at::Tensor> per_sample_weights, std::int64_t length, std::int64_t bags,
                         std::string mode, c10::optional<std::int64_t> padding_idx, bool include_last_offset,
                         c10::optional<double> max_norm, double norm_type, bool scale_grad_by_freq, bool sparse,
                         std::int64_t threads) {
  return embedding_bag_node::apply(weight, input, offsets, per_sample_weights, length, bags, mode, padding_idx,
                                   include_last_offset, max_norm, norm_type, scale_grad_by_freq, sparse, threads);
}

// embag.embedding_bag and embag.embedding_bag_forward on tensors, called by embag._embag's entry
// point with its arguments bound (positional: weight, input, offsets, per_sample_weights, mode,
// padding_idx, include_last_offset, max_norm, norm_type, threads, with_max_indices): out, or (out,
// max_indices), or NotImplemented where the weight is not float32 (embag._embag reads a 16-bit one
// itself). A vectorcall entry point as theirs (entry_points.hpp), the bags' layout read here from
// the tensors' sizes.
pybind11::object functional_forward(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  if (nargs != 11 || kwnames != nullptr) throw pybind11::type_error("embag._torch_nn.forward takes 11 positional arguments");
  if (THPVariable_Check(args[0]) && THPVariable_Unpack(args[0]).scalar_type() != at::kFloat)
    return pybind11::reinterpret_borrow<pybind11::object>(Py_NotImplemented);
  auto tensor = [&](int i, const char* what) -> const at::Tensor& {
    if (!THPVariable_Check(args[i])) refuse(std::string(what) + " must be a torch.Tensor");
    return THPVariable_Unpack(args[i]);
  };
  auto optional_tensor = [&](int i, const char* what) -> c10::optional<at::Tensor> {
    if (args[i] == Py_None) return c10::nullopt;
    return tensor(i, what);
  };
  auto checked = [](auto value) {
    if (PyErr_Occurred()) throw pybind11::error_already_set();
    return value;
  };
  const at::Tensor& weight = tensor(0, "weight");
  const at::Tensor& input = tensor(1, "input");
  c10::optional<at::Tensor> offsets = optional_tensor(2, "offsets");
  const c10::optional<at::Tensor> per_sample_weights = optional_tensor(3, "per_sample_weights");
  Py_ssize_t mode_size = 0;
  const char* mode_text = PyUnicode_AsUTF8AndSize(args[4], &mode_size);
  if (mode_text == nullptr) throw pybind11::error_already_set();
  const std::string mode(mode_text, static_cast<std::size_t>(mode_size));
  // engaged first, then reset where None: GCC 12 takes the copy of a never-engaged c10::optional
  // (run_forward's by-value argument) for a read of uninitialised storage
  c10::optional<std::int64_t> padding_idx(0);
  if (args[5] == Py_None) padding_idx.reset();
  else *padding_idx = checked(PyLong_AsLongLong(args[5]));
  const bool include_last_offset = args[6] == Py_True;
  c10::optional<double> max_norm(0.0);
  if (args[7] == Py_None) max_norm.reset();
  else *max_norm = checked(PyFloat_AsDouble(args[7]));
  const double norm_type = checked(PyFloat_AsDouble(args[8]));
  const std::int64_t threads = checked(PyLong_AsLongLong(args[9]));
  const bool with_max_indices = args[10] == Py_True;

  auto shape = [](const c10::optional<at::Tensor>& t) {
    return t ? std::optional(std::span<const std::int64_t>(t->sizes().data(), t->sizes().size())) : std::nullopt;
  };
  const embag_python::bag_layout layout =
      embag_python::layout_of({input.sizes().data(), input.sizes().size()}, shape(offsets),
                              input.dim() == 2 ? shape(per_sample_weights) : std::nullopt, include_last_offset,
                              "embedding_bag");
  if (layout.zero_offsets) offsets = at::zeros({layout.bags}, at::TensorOptions().dtype(at::kLong));
  auto [out, argmax] = run_forward(weight, input, offsets, per_sample_weights, layout.fixed_length, layout.bags, mode,
                                   padding_idx, include_last_offset, max_norm, norm_type, threads, with_max_indices);
  if (with_max_indices) return pybind11::make_tuple(out, argmax);
  return pybind11::reinterpret_steal<pybind11::object>(THPVariable_Wrap(std::move(out)));
}

}  // namespace

PYBIND11_MODULE(_torch_nn, m) {
  m.doc() = "embag on torch tensors read as at::Tensor: embag.nn.EmbeddingBag's C++ autograd node and the functional "
            "forward's tensor path (use embag and embag.nn, not this module)";
  m.def("embedding_bag", &embedding_bag);
  m.def("set_buffer_cache_limit", [](std::size_t bytes) {  // embag.set_buffer_cache_limit's, for this module's memory
    kept_memory& memory = kept();
    std::lock_guard<std::mutex> hold(memory.lock);
    embag_python::buffer_cache().limit = bytes;
    memory.outputs.trim();
    memory.gradients.trim();
  });
  m.def("buffer_cache_bytes", [] {
    kept_memory& memory = kept();
    std::lock_guard<std::mutex> hold(memory.lock);
    return embag_python::buffer_cache().held;
  });
  static PyMethodDef forward_entry{"forward", embag_python::as_method<functional_forward>(), METH_FASTCALL | METH_KEYWORDS,
                                   "embag.embedding_bag's tensor path (called by embag._embag, not by you)"};
  embag_python::add_entry_point(m, forward_entry, "embag._torch_nn");
}
