// Entry points: validate everything, then plan, then dispatch to the reference or an ISA's
// kernels. Nothing is written before the last check has passed.
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <string>
#include <cstring>
#include <new>
#include <utility>

#include "embag/quantize.hpp"
#include "embag/roofline.hpp"
#include "allocation.hpp"
#include "dispatch/dispatch.hpp"
#include "parallel.hpp"
#include "plan.hpp"
#include "reference/reference.hpp"
#include "sparse_into.hpp"
#include "validate.hpp"

namespace embag {
namespace {

using namespace detail;

std::int64_t bytes_of(const index_span& s) { return s.size * (s.type == index_type::i32 ? 4 : 8); }

// The caller's read-only arrays of a call, which no output may overlap.
struct call_inputs {
  std::array<byte_range, 5> ranges;
  int count = 0;
  call_inputs(const bags& batch, byte_range table_or_grad) {
    ranges[count++] = table_or_grad;
    ranges[count++] = {"indices", batch.indices.data, bytes_of(batch.indices)};
    // fixed-length bags have no boundaries array: whatever the span holds is not read
    ranges[count++] = {"offsets/lengths", batch.boundaries.data,
                       batch.layout == bag_layout::fixed_length ? 0 : bytes_of(batch.boundaries)};
    ranges[count++] = {"per_sample_weights", batch.per_sample_weights.data(),
                       static_cast<std::int64_t>(batch.per_sample_weights.size_bytes())};
  }
  void add(byte_range r) { ranges[count++] = r; }
  std::span<const byte_range> span() const { return {ranges.data(), static_cast<std::size_t>(count)}; }
};

// The caller's workspace, or a fresh one for this call only when it gave none.
class scratch_or_local {
 public:
  explicit scratch_or_local(workspace* scratch) : scratch_(scratch) {
    if (scratch_ == nullptr) scratch_ = &local_.emplace();
  }
  workspace::impl& get() { return scratch_->get(); }

 private:
  workspace* scratch_;
  std::optional<workspace> local_;
};

std::int64_t rows_of(const bag_source& bags, mode m) { return reduction_of(m).pool == pooling::lookup ? bags.nnz : bags.num_bags; }

// A validated table: where its rows are and how they are stored.
struct stored_table {
  const std::byte* data = nullptr;
  dtype type = dtype::f32;
  std::int64_t rows = 0, dim = 0, stride = 0, row_bytes = 0;  // stride and row_bytes in bytes

  byte_range bytes() const { return {"table", data, rows == 0 ? 0 : (rows - 1) * stride + row_bytes}; }
};

stored_table stored(table_view<const float> t) {
  const std::int64_t stride = validate_matrix("table", t.data, t.rows, t.dim, t.row_stride);
  // Validation bounds the rows' bytes only when there are rows: with none, clamp so that the byte
  // counts cannot overflow (nothing is read).
  const auto bytes = [](std::int64_t floats) { return std::min(floats, max_array_bytes / 4) * 4; };
  return {reinterpret_cast<const std::byte*>(t.data), dtype::f32, t.rows, t.dim, bytes(stride), bytes(t.dim)};
}

stored_table stored(compressed_table_view t) {
  const std::int64_t stride = validate_compressed("table", t);
  if (t.element_type == dtype::f32) {  // read as floats: rows float-aligned (the others are read bytewise)
    if (stride % 4 != 0)
      throw error(errc::misaligned, "table has row_stride " + std::to_string(stride) + " bytes, not a multiple of its 4-byte f32 elements");
    return stored(table_view<const float>{reinterpret_cast<const float*>(t.data), t.rows, t.dim, stride / 4});
  }
  return {t.data, t.element_type, t.rows, t.dim, stride, row_bytes(t.element_type, t.dim)};
}

forward_request make_forward_request(const stored_table& t, const bag_source& bags, const options& opts,
                                     std::int64_t padding) {
  forward_request req;
  req.table = t.data;
  req.element_type = t.type;
  req.rows = t.rows;
  req.dim = t.dim;
  req.row_stride = t.stride;
  req.row_bytes = t.row_bytes;
  req.rows_line_aligned = reinterpret_cast<std::uintptr_t>(t.data) % 64 == 0 && t.stride % 64 == 0;
  req.bags = bags;
  req.reduce = reduction_of(opts.mode);
  req.padding_idx = padding;
  req.clip_max_norm = opts.max_norm.has_value() && opts.max_norm_mode == max_norm_flavour::clip;
  req.max_norm = opts.max_norm.value_or(0.0f);
  req.norm_type = opts.norm_type;
  return req;
}

void run_forward(isa which, forward_request& req, const execution& how) {
  if (which == isa::reference) return reference::forward(req);
  choose_prefetch(req, how.prefetch);
  block_list plan;
  plan_forward_blocks(req.bags, req.reduce.pool, req.dim, threads_for(how), plan);
  const kernel_table& k = kernels_of(which);
  using clock = std::chrono::steady_clock;
  const clock::time_point start = req.prefetch_trial >= 0 ? clock::now() : clock::time_point{};
  run_blocks(plan.count, how, [&](std::int64_t i) { k.forward(req, plan.blocks[i]); });
  if (req.prefetch_trial >= 0) report_prefetch_trial(req, std::chrono::duration<double>(clock::now() - start).count());
}

// mutable_table: the same rows as t's when the caller allows max_norm in place to write them.
void forward_checked(const stored_table& t, float* mutable_table, const bags& batch, const options& opts,
                     matrix_view<float> out, std::span<std::int64_t> argmax, workspace* scratch) {
  const std::int64_t padding = validate_options(opts, t.rows);
  if (opts.max_norm && t.type != dtype::f32)
    throw error(errc::invalid_option, "max_norm needs an f32 table; this one is " + std::string(to_string(t.type)));
  const bag_source bags = validate_bags(batch, opts, t.rows);
  const std::int64_t out_rows = rows_of(bags, opts.mode);
  const std::int64_t out_stride = validate_output("out", out, out_rows, t.dim);
  validate_argmax_size(argmax, opts, out_rows, t.dim);
  const bool in_place = opts.max_norm && opts.max_norm_mode == max_norm_flavour::in_place;
  if (in_place && mutable_table == nullptr && t.rows > 0)
    throw error(errc::invalid_option, "max_norm_mode in_place needs a mutable table (a table_view<float>)");
  const byte_range outputs[] = {matrix_bytes("out", out.data, out_rows, t.dim, out_stride),
                                {"argmax", argmax.data(), static_cast<std::int64_t>(argmax.size_bytes())}};
  const call_inputs inputs(batch, t.bytes());
  validate_disjoint(outputs, inputs.span());
  if (in_place) {  // the table is written too: it must not hold the indices, offsets or weights
    const byte_range written[] = {t.bytes()};
    validate_disjoint(written, inputs.span().subspan(1));
  }
  const isa which = resolve_isa(opts.execution.isa);

  if (in_place) {
    scratch_or_local ws(scratch);
    renorm_distinct_rows(mutable_table, t.stride / 4, t.dim, bags.indices, bags.index_kind, bags.nnz,
                         *opts.max_norm, opts.norm_type, ws.get());
  }
  forward_request req = make_forward_request(t, bags, opts, padding);
  req.out = out.data;
  req.out_stride = out_stride;
  req.argmax = argmax.empty() ? nullptr : argmax.data();
  run_forward(which, req, opts.execution);
}

// What backward_dense and backward_sparse share: validation and the request, before any write.
struct backward_call {
  backward_request req;
  isa which = isa::reference;
  call_inputs inputs;  // what the gradient output must not overlap
};

backward_call prepare_backward(std::int64_t rows, std::int64_t dim, const bags& batch, const options& opts,
                               matrix_view<const float> grad_output, std::span<const std::int64_t> argmax) {
  const std::int64_t padding = validate_options(opts, rows);
  const bag_source bags = validate_bags(batch, opts, rows);
  const std::int64_t out_rows = rows_of(bags, opts.mode);
  const std::int64_t grad_stride = validate_input("grad_output", grad_output, out_rows, dim);
  if (opts.mode == mode::max) {
    if (argmax.empty() && out_rows > 0)
      throw error(errc::size_mismatch, "mode max needs the argmax that forward produced");
    validate_argmax_size(argmax, opts, out_rows, dim);
    validate_argmax_values(argmax, bags, padding, dim);
  } else if (!argmax.empty()) {
    throw error(errc::invalid_option, "argmax is only defined for mode max");
  }
  backward_call call{{}, isa::reference, call_inputs(batch, matrix_bytes("grad_output", grad_output.data, out_rows, dim, grad_stride))};
  call.inputs.add({"argmax", argmax.data(), static_cast<std::int64_t>(argmax.size_bytes())});
  call.which = resolve_isa(opts.execution.isa);
  backward_request& r = call.req;
  r.bags = bags;
  r.rows = rows;
  r.dim = dim;
  r.reduce = reduction_of(opts.mode);
  r.padding_idx = padding;
  r.scale_grad_by_freq = opts.scale_grad_by_freq;
  r.grad_output = grad_output.data;
  r.grad_output_stride = grad_stride;
  r.argmax = argmax.empty() ? nullptr : argmax.data();
  return call;
}

// What both forms of backward_sparse check before their outputs.
backward_call prepare_sparse_backward(std::int64_t table_rows, const bags& batch, const options& opts,
                                      matrix_view<const float> grad_output, std::span<const std::int64_t> argmax) {
  if (table_rows < 0)
    throw error(errc::invalid_shape, "table_rows = " + std::to_string(table_rows) + " must be >= 0");
  return prepare_backward(table_rows, grad_output.cols, batch, opts, grad_output, argmax);
}

// The kernels over blocks of unique rows of r.transpose.
void run_row_kernels(isa which, const backward_request& r, const execution& how) {
  block_list plan;
  plan_row_blocks(r.transpose, r.dim, threads_for(how), plan);
  const kernel_table& k = kernels_of(which);
  run_blocks(plan.count, how,
             [&](std::int64_t i) { k.backward_rows(r, plan.blocks[i].bag_begin, plan.blocks[i].bag_end); });
}

// Dense pooled sums (sum, mean, sqrtn) without scale_grad_by_freq: straight from the bags, the table's rows split
// over the threads.
void run_scatter_kernels(isa which, backward_request& r, const execution& how) {
  choose_scatter_prefetch(r, how.prefetch);
  block_list plan;
  plan_row_ranges(r.rows, 2 * r.bags.nnz * r.dim, threads_for(how), plan);
  const kernel_table& k = kernels_of(which);
  run_blocks(plan.count, how, [&](std::int64_t i) { k.backward_scatter(r, plan.blocks[i].bag_begin, plan.blocks[i].bag_end); });
}

// gather_roofline's state: the validated call, planned once.
struct roofline_call {
  forward_request req;
  block_list plan;
  const kernel_table* kernels = nullptr;
  execution how;
};

roofline_call prepare_roofline(const stored_table& t, const bags& batch, matrix_view<float> out, const execution& how) {
  options opts;
  opts.execution = how;
  validate_options(opts, t.rows);
  if (batch.layout != bag_layout::offsets || batch.boundaries.type != batch.indices.type)
    throw error(errc::invalid_option, "gather_roofline takes bags given by offsets of the indices' own type");
  if (!batch.per_sample_weights.empty())
    throw error(errc::invalid_option, "gather_roofline sums rows unweighted: it takes no per_sample_weights");
  const bag_source bags = validate_bags(batch, opts, t.rows);
  const std::int64_t out_stride = validate_output("out", out, bags.num_bags, t.dim);
  const byte_range outputs[] = {matrix_bytes("out", out.data, bags.num_bags, t.dim, out_stride)};
  validate_disjoint(outputs, call_inputs(batch, t.bytes()).span());
  const isa which = resolve_isa(how.isa);
  if (which == isa::reference)
    throw error(errc::unsupported_isa, "gather_roofline measures the memory system: it needs a SIMD ISA, not reference");
  roofline_call call{make_forward_request(t, bags, opts, no_padding), {}, &kernels_of(which), how};
  call.req.out = out.data;
  call.req.out_stride = out_stride;
  choose_prefetch(call.req, how.prefetch);
  call.req.prefetch_trial = -1;  // its times are not forward's
  plan_forward_blocks(bags, pooling::sum, t.dim, threads_for(how), call.plan);
  return call;
}

// Backward's row transpose (plan.cpp): six int64 arrays over the call's indices (row, position and
// bag, and their radix-sort scratch), grown in the workspace.
row_transpose transposed(backward_request& r, const execution& how, workspace::impl& ws) {
  try {
    return build_row_transpose(r.bags, r.rows, r.padding_idx, r.reduce, how, ws);
  } catch (const std::bad_alloc&) {
    detail::out_of_memory("backward's row transpose of " + std::to_string(r.bags.nnz) + " indices",
                          static_cast<std::size_t>(r.bags.nnz) * 6 * sizeof(std::int64_t));
  }
}

// The scalar oracle's backward, which sorts a copy of the call's (row, position) pairs.
void reference_backward(const backward_request& r, sparse_gradient* grad) {
  try {
    reference::backward(r, grad);
  } catch (const std::bad_alloc&) {
    detail::out_of_memory("the reference backward of " + std::to_string(r.bags.nnz) + " indices",
                          static_cast<std::size_t>(r.bags.nnz) * 2 * sizeof(std::int64_t));
  }
}

}  // namespace

std::string_view version() noexcept { return EMBAG_VERSION; }

std::string_view to_string(errc code) noexcept {
  switch (code) {
    case errc::index_out_of_range: return "index_out_of_range";
    case errc::bad_offsets: return "bad_offsets";
    case errc::bad_lengths: return "bad_lengths";
    case errc::size_mismatch: return "size_mismatch";
    case errc::null_pointer: return "null_pointer";
    case errc::invalid_shape: return "invalid_shape";
    case errc::size_overflow: return "size_overflow";
    case errc::invalid_option: return "invalid_option";
    case errc::aliasing: return "aliasing";
    case errc::unsupported_isa: return "unsupported_isa";
    case errc::misaligned: return "misaligned";
    case errc::io_error: return "io_error";
    case errc::bad_file: return "bad_file";
    case errc::out_of_memory: return "out_of_memory";
  }
  return "unknown";
}

std::string_view to_string(mode which) noexcept {
  switch (which) {
    case mode::sum: return "sum";
    case mode::mean: return "mean";
    case mode::max: return "max";
    case mode::none: return "none";
    case mode::sqrtn: return "sqrtn";
  }
  return "unknown";
}

std::optional<mode> mode_from_string(std::string_view name) noexcept {
  for (mode which : {mode::sum, mode::mean, mode::max, mode::none, mode::sqrtn})
    if (to_string(which) == name) return which;
  return std::nullopt;
}

std::int64_t output_rows(const bags& batch, const options& opts) {
  if (reduction_of(opts.mode).pool == pooling::lookup) return batch.indices.size;
  switch (batch.layout) {
    case bag_layout::offsets: return batch.boundaries.size - (opts.include_last_offset ? 1 : 0);
    case bag_layout::lengths: return batch.boundaries.size;
    case bag_layout::fixed_length: return batch.fixed_length > 0 ? batch.indices.size / batch.fixed_length : 0;
  }
  return 0;
}

void forward(table_view<const float> table, const bags& batch, const options& opts, matrix_view<float> out,
             std::span<std::int64_t> argmax) {
  forward_checked(stored(table), nullptr, batch, opts, out, argmax, nullptr);
}

void forward(table_view<float> table, const bags& batch, const options& opts, matrix_view<float> out,
             std::span<std::int64_t> argmax, workspace* scratch) {
  forward_checked(stored(table_view<const float>(table)), table.data, batch, opts, out, argmax, scratch);
}

void forward(compressed_table_view table, const bags& batch, const options& opts, matrix_view<float> out,
             std::span<std::int64_t> argmax) {
  forward_checked(stored(table), nullptr, batch, opts, out, argmax, nullptr);
}

void backward_dense(const bags& batch, const options& opts, matrix_view<const float> grad_output,
                    matrix_view<float> grad_table, std::span<const std::int64_t> argmax, workspace* scratch) {
  const std::int64_t stride =
      validate_matrix("grad_table", grad_table.data, grad_table.rows, grad_table.cols, grad_table.row_stride);
  backward_call call = prepare_backward(grad_table.rows, grad_table.cols, batch, opts, grad_output, argmax);
  const byte_range outputs[] = {matrix_bytes("grad_table", grad_table.data, grad_table.rows, grad_table.cols, stride)};
  validate_disjoint(outputs, call.inputs.span());

  call.req.grad_table = grad_table.data;
  call.req.grad_table_stride = stride;
  if (call.which == isa::reference) return reference_backward(call.req, nullptr);
  backward_request& r = call.req;
  if (r.reduce.pool == pooling::sum && !r.scale_grad_by_freq)
    return run_scatter_kernels(call.which, r, opts.execution);
  scratch_or_local ws(scratch);
  r.transpose = transposed(r, opts.execution, ws.get());
  run_row_kernels(call.which, r, opts.execution);
}

void backward_sparse(std::int64_t table_rows, const bags& batch, const options& opts,
                     matrix_view<const float> grad_output, sparse_gradient& grad,
                     std::span<const std::int64_t> argmax, workspace* scratch) {
  const std::int64_t dim = grad_output.cols;
  backward_call call = prepare_sparse_backward(table_rows, batch, opts, grad_output, argmax);
  const byte_range outputs[] = {
      {"grad.rows", grad.rows.data(), static_cast<std::int64_t>(grad.rows.capacity() * sizeof(std::int64_t))},
      {"grad.values", grad.values.data(), static_cast<std::int64_t>(grad.values.capacity() * sizeof(float))}};
  validate_disjoint(outputs, call.inputs.span());

  if (call.which == isa::reference) return reference_backward(call.req, &grad);
  scratch_or_local ws(scratch);
  backward_request& r = call.req;
  r.transpose = transposed(r, opts.execution, ws.get());
  const std::int64_t unique = r.transpose.num_unique;
  // reserve first: if memory runs out, grad is still what it was
  try {
    grad.rows.reserve(static_cast<std::size_t>(unique));
    grad.values.reserve(static_cast<std::size_t>(unique * dim));
  } catch (const std::bad_alloc&) {
    detail::out_of_memory("the sparse gradient of " + std::to_string(unique) + " rows x " + std::to_string(dim),
                          static_cast<std::size_t>(unique) * static_cast<std::size_t>(dim + 2) * 4);
  }
  grad.dim = dim;
  grad.rows.assign(r.transpose.unique_rows, r.transpose.unique_rows + unique);
  grad.values.resize(static_cast<std::size_t>(unique * dim));
  r.sparse_values = grad.values.data();
  run_row_kernels(call.which, r, opts.execution);
}

void detail::backward_sparse_into(std::int64_t table_rows, const bags& batch, const options& opts,
                                  matrix_view<const float> grad_output, std::span<const std::int64_t> argmax,
                                  const sparse_gradient_buffers& out, std::int64_t& num_rows) {
  backward_call call = prepare_sparse_backward(table_rows, batch, opts, grad_output, argmax);
  const std::int64_t dim = call.req.dim;
  const auto capacity = static_cast<std::int64_t>(out.rows.size());
  validate_array("rows_out", out.rows.data(), capacity, sizeof(std::int64_t));
  std::int64_t values_size = 0;
  if (__builtin_mul_overflow(capacity, dim, &values_size))
    throw error(errc::size_overflow, "values_out of capacity = " + std::to_string(capacity) + " rows of " +
                                         std::to_string(dim) + " floats overflows the address space");
  validate_array("values_out", out.values, values_size, sizeof(float));
  const byte_range outputs[] = {{"num_rows", &num_rows, sizeof num_rows},
                                {"rows_out", out.rows.data(), static_cast<std::int64_t>(out.rows.size_bytes())},
                                {"values_out", out.values, values_size * std::int64_t{sizeof(float)}}};
  validate_disjoint(outputs, call.inputs.span());

  // num_rows is written even when the rows do not fit: that is how a caller learns the capacity
  const auto count_rows = [&](std::int64_t unique) {
    num_rows = unique;
    if (unique > capacity)
      throw error(errc::size_mismatch, "capacity = " + std::to_string(capacity) + " rows is less than the " +
                                           std::to_string(unique) + " rows this gradient has (*num_rows)");
  };
  if (call.which == isa::reference) {  // the oracle fills a gradient of its own: copied once it fits
    sparse_gradient grad;
    reference_backward(call.req, &grad);
    count_rows(static_cast<std::int64_t>(grad.rows.size()));
    std::copy(grad.rows.begin(), grad.rows.end(), out.rows.begin());
    std::copy(grad.values.begin(), grad.values.end(), out.values);
    return;
  }
  scratch_or_local ws(nullptr);
  backward_request& r = call.req;
  r.transpose = transposed(r, opts.execution, ws.get());
  count_rows(r.transpose.num_unique);
  r.sparse_values = out.values;
  run_row_kernels(call.which, r, opts.execution);
  std::copy(r.transpose.unique_rows, r.transpose.unique_rows + r.transpose.num_unique, out.rows.begin());
}

void per_sample_weights_grad(table_view<const float> table, const bags& batch, const options& opts,
                             matrix_view<const float> grad_output, std::span<float> grad_weights) {
  const stored_table t = stored(table);
  const std::int64_t padding = validate_options(opts, table.rows);
  const bag_source bags = validate_bags(batch, opts, table.rows);
  if (bags.weights == nullptr && bags.nnz > 0)
    throw error(errc::invalid_option, "per_sample_weights_grad needs per_sample_weights");
  if (!takes_weights(reduction_of(opts.mode)))
    throw error(errc::invalid_option, "per_sample_weights_grad is defined for mode sum, mean and sqrtn only");
  const std::int64_t grad_stride = validate_input("grad_output", grad_output, bags.num_bags, table.dim);
  if (static_cast<std::int64_t>(grad_weights.size()) != bags.nnz)
    throw error(errc::size_mismatch, "grad_weights has " + std::to_string(grad_weights.size()) +
                                         " entries but indices has " + std::to_string(bags.nnz));
  validate_array("grad_weights", grad_weights.data(), bags.nnz, sizeof(float));
  call_inputs inputs(batch, t.bytes());
  inputs.add(matrix_bytes("grad_output", grad_output.data, bags.num_bags, table.dim, grad_stride));
  const byte_range outputs[] = {
      {"grad_weights", grad_weights.data(), static_cast<std::int64_t>(grad_weights.size_bytes())}};
  validate_disjoint(outputs, inputs.span());
  const isa which = resolve_isa(opts.execution.isa);

  weights_grad_request w;
  w.forward = make_forward_request(t, bags, opts, padding);
  w.grad_output = grad_output.data;
  w.grad_output_stride = grad_stride;
  w.grad_weights = grad_weights.data();
  if (which == isa::reference) return reference::weights_grad(w);
  block_list plan;
  plan_forward_blocks(bags, reduction_of(opts.mode).pool, table.dim, threads_for(opts.execution), plan);
  const kernel_table& k = kernels_of(which);
  run_blocks(plan.count, opts.execution, [&](std::int64_t i) { k.weights_grad(w, plan.blocks[i]); });
}

struct gather_roofline::impl {
  roofline_call call;
};

gather_roofline::gather_roofline(table_view<const float> table, const bags& batch, matrix_view<float> out,
                                 const execution& how)
    : impl_(std::make_unique<impl>(impl{prepare_roofline(stored(table), batch, out, how)})) {}

gather_roofline::gather_roofline(compressed_table_view table, const bags& batch, matrix_view<float> out,
                                 const execution& how)
    : impl_(std::make_unique<impl>(impl{prepare_roofline(stored(table), batch, out, how)})) {}

gather_roofline::gather_roofline(gather_roofline&&) noexcept = default;
gather_roofline& gather_roofline::operator=(gather_roofline&&) noexcept = default;
gather_roofline::~gather_roofline() = default;

void gather_roofline::run() const {
  const roofline_call& c = impl_->call;
  run_blocks(c.plan.count, c.how, [&](std::int64_t i) { c.kernels->gather_bags(c.req, c.plan.blocks[i]); });
}

prefetch_setting gather_roofline::prefetch() const noexcept {
  return {impl_->call.req.prefetch, impl_->call.req.prefetch == prefetch_level::none ? 0 : impl_->call.req.prefetch_rows};
}

void renorm_rows(table_view<float> table, index_span rows, float max_norm, float norm_type) {
  const std::int64_t stride = validate_matrix("table", table.data, table.rows, table.dim, table.row_stride);
  options opts;
  opts.max_norm = max_norm;
  opts.norm_type = norm_type;
  validate_options(opts, table.rows);
  validate_indices("rows", rows, table.rows);
  scratch_or_local ws(nullptr);
  renorm_distinct_rows(table.data, stride, table.dim, rows.data, rows.type, rows.size, max_norm, norm_type,
                       ws.get());
}

// ---------------------------------------------------------------------------------------------

workspace::workspace() : impl_(std::make_unique<impl>()) {}
workspace::workspace(workspace&&) noexcept = default;
workspace& workspace::operator=(workspace&&) noexcept = default;
workspace::~workspace() = default;

table::table(std::int64_t rows, std::int64_t dim) {
  constexpr std::int64_t line_floats = 16;      // 64-byte rows
  constexpr std::size_t huge_page = 2u << 20;  // 2 MiB
  if (rows < 0 || dim <= 0)
    throw error(errc::invalid_shape, "table(" + std::to_string(rows) + ", " + std::to_string(dim) +
                                         "): rows must be >= 0 and dim > 0");
  if (dim > std::numeric_limits<std::int64_t>::max() / 8)
    throw error(errc::size_overflow, "table(" + std::to_string(rows) + ", " + std::to_string(dim) +
                                         ") overflows the address space");
  const std::int64_t stride = (dim + line_floats - 1) / line_floats * line_floats;
  std::int64_t bytes = 0;
  if (__builtin_mul_overflow(rows, stride, &bytes) || __builtin_mul_overflow(bytes, std::int64_t{4}, &bytes) ||
      bytes > std::numeric_limits<std::int64_t>::max() / 2)
    throw error(errc::size_overflow, "table(" + std::to_string(rows) + ", " + std::to_string(dim) +
                                         ") overflows the address space");
  bytes_ = (static_cast<std::size_t>(bytes) + huge_page - 1) / huge_page * huge_page;
  if (bytes_ == 0) bytes_ = huge_page;
  void* p = std::aligned_alloc(huge_page, bytes_);
  if (p == nullptr)
    detail::out_of_memory("table(" + std::to_string(rows) + ", " + std::to_string(dim) + ")", bytes_);
  madvise(p, bytes_, MADV_HUGEPAGE);  // advice only: fine if the kernel declines
  std::memset(p, 0, bytes_);
  data_ = static_cast<float*>(p);
  rows_ = rows;
  dim_ = dim;
  row_stride_ = stride;
}

table::table(table&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      rows_(std::exchange(other.rows_, 0)),
      dim_(std::exchange(other.dim_, 0)),
      row_stride_(std::exchange(other.row_stride_, 0)),
      bytes_(std::exchange(other.bytes_, 0)) {}

table& table::operator=(table&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    rows_ = std::exchange(other.rows_, 0);
    dim_ = std::exchange(other.dim_, 0);
    row_stride_ = std::exchange(other.row_stride_, 0);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

table::~table() { std::free(data_); }

}  // namespace embag
