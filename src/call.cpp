#include "call.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <string>

#include "allocation.hpp"
#include "dispatch/dispatch.hpp"

namespace embag::detail {
namespace {

std::int64_t bytes_of(const index_span& s) { return s.size * (s.type == index_type::i32 ? 4 : 8); }

std::int64_t rows_of(const bag_source& bags, mode m) {
  return reduction_of(m).pool == pooling::lookup ? bags.nnz : bags.num_bags;
}

// options.report: an output of the call.
byte_range report_bytes(const options& opts) {
  return {"report", opts.report, opts.report != nullptr ? std::int64_t{sizeof(index_report)} : 0};
}

}  // namespace

forward_request forward_request_for(const stored_table& t, const bag_source& bags, const options& opts,
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

table_view<const float> stored_table::floats() const {
  return {reinterpret_cast<const float*>(data), rows, dim, stride / std::int64_t{sizeof(float)}};
}

stored_table stored(table_view<const float> t) {
  const std::int64_t stride = validate_matrix("table", t.data, t.rows, t.dim, t.row_stride);
  // Validation bounds the rows' bytes only when there are rows: with none, clamp so that the byte
  // counts cannot overflow (nothing is read).
  const auto bytes = [](std::int64_t floats) { return std::min(floats, max_array_bytes / 4) * 4; };
  return {reinterpret_cast<const std::byte*>(t.data), dtype::f32, t.rows, t.dim, bytes(stride), bytes(t.dim)};
}

stored_table stored(table_view<float> t) {
  stored_table s = stored(table_view<const float>(t));
  s.writable = t.data;
  return s;
}

stored_table stored(compressed_table_view t) {
  const std::int64_t stride = validate_compressed("table", t);
  if (t.element_type == dtype::f32) {  // read as floats: rows float-aligned (the others are read bytewise)
    if (stride % 4 != 0)
      throw error(errc::misaligned, "table has row_stride " + std::to_string(stride) +
                                        " bytes, not a multiple of its 4-byte f32 elements");
    return stored(table_view<const float>{reinterpret_cast<const float*>(t.data), t.rows, t.dim, stride / 4});
  }
  return {t.data, t.element_type, t.rows, t.dim, stride, row_bytes(t.element_type, t.dim)};
}

call_inputs::call_inputs(const bags& batch, const options& opts, byte_range table_or_grad) {
  ranges_[count_++] = table_or_grad;
  ranges_[count_++] = {"indices", batch.indices.data, bytes_of(batch.indices)};
  // fixed-length bags have no boundaries array: whatever the span holds is not read
  ranges_[count_++] = {"offsets/lengths", batch.boundaries.data,
                       batch.layout == bag_layout::fixed_length ? 0 : bytes_of(batch.boundaries)};
  ranges_[count_++] = {"per_sample_weights", batch.per_sample_weights.data(),
                       static_cast<std::int64_t>(batch.per_sample_weights.size_bytes())};
  ranges_[count_++] = {"remap", opts.remap.data, bytes_of(opts.remap)};
}

std::vector<std::int64_t>& index_storage(workspace* scratch, std::vector<std::int64_t>& own) {
  return scratch != nullptr ? scratch->get().rewritten_indices : own;
}

forward_call validate_forward(const stored_table& t, const bags& batch, const options& opts, const output_view& out,
                              std::span<std::int64_t> argmax, std::vector<std::int64_t>& rewritten) {
  const std::int64_t padding = validate_options(opts, t.rows);
  if (opts.max_norm && t.type != dtype::f32)
    throw error(errc::invalid_option, "max_norm needs an f32 table; this one is " + std::string(to_string(t.type)));
  index_census census;
  const bag_source bags = validate_bags(batch, opts, t.rows, padding, rewritten, census);
  const std::int64_t out_rows = rows_of(bags, opts.mode);
  const std::int64_t out_stride = validate_output("out", out, out_rows, t.dim);
  const std::int64_t out_bytes = output_element_bytes(out.type);
  if (out.type != dtype::f32 && t.dim > narrowing_stage_floats)
    throw error(errc::invalid_shape, "out of " + std::string(to_string(out.type)) + " elements has dim " +
                                         std::to_string(t.dim) + ": 16-bit outputs take at most " +
                                         std::to_string(narrowing_stage_floats) + " columns");
  validate_argmax_size(argmax, opts, out_rows, t.dim);
  const bool in_place = opts.max_norm && opts.max_norm_mode == max_norm_flavour::in_place;
  if (in_place && t.writable == nullptr && t.rows > 0)
    throw error(errc::invalid_option, "max_norm_mode in_place needs a mutable table (a table_view<float>)");
  const byte_range outputs[] = {matrix_bytes("out", out.data, out_rows, t.dim, out_stride, out_bytes),
                                {"argmax", argmax.data(), static_cast<std::int64_t>(argmax.size_bytes())},
                                report_bytes(opts)};
  const call_inputs inputs(batch, opts, t.bytes());
  validate_disjoint(outputs, inputs.span());
  if (in_place) {  // the table is written too: it must not hold the indices, offsets or weights
    const byte_range written[] = {t.bytes()};
    validate_disjoint(written, inputs.span().subspan(1));
  }
  forward_call call{{forward_request_for(t, bags, opts, padding), census, resolve_isa(opts.execution.isa),
                     opts.execution},
                    in_place ? t.writable : nullptr};
  if (out.type == dtype::f32) {
    call.req.out = static_cast<float*>(out.data);
    call.req.out_stride = out_stride;
  } else {  // the dispatch stages fp32 rows (req.out) and rounds them into the output
    call.req.narrowed = {static_cast<std::byte*>(out.data), out_stride, out.type};
  }
  call.req.argmax = argmax.empty() ? nullptr : argmax.data();
  return call;
}

namespace {

std::string table_name(std::size_t t) { return "tables[" + std::to_string(t) + "]"; }

// Each table of a batch validated by validate_one(t, rewritten), which returns its validated call
// (its indices rewritten, if at all, into `rewritten`: the table's own vector of the workspace),
// after the check every batched table shares (its execution left to the call's); an error names
// the table. Each call's request goes in `requests`, its census in the workspace. The vectors
// only grow: a reused workspace stops allocating.
template <class Table, class Request, class Validate>
void validate_each_table(std::span<const Table> tables, std::vector<Request>& requests, workspace::impl& ws,
                         const char* what, Validate&& validate_one) {
  reserved(requests, tables.size(), what);
  requests.clear();
  reserved(ws.batched_censuses, tables.size(), "the index censuses of a batched call");
  ws.batched_censuses.clear();
  if (ws.batched_indices.size() < tables.size())
    resized(ws.batched_indices, tables.size(), "the rewritten indices of a batched call");
  for (std::size_t t = 0; t < tables.size(); ++t) {
    try {
      if (!default_execution(tables[t].opts.execution))
        throw error(errc::invalid_option, "opts.execution is set: a batched call runs every table with its own execution");
      const auto call = validate_one(t, ws.batched_indices[t]);
      requests.push_back(call.req);
      ws.batched_censuses.push_back(call.census);
    } catch (const error& e) {
      throw error(e.code(), table_name(t) + ": " + e.what());
    }
  }
}

// Then across the tables: what each reads (reads_of(t): its call_inputs) and writes
// (writes_of(t, add): its outputs, added as table_ranges; and its report, which one shared would
// hold whichever table was written last), gathered in the workspace and checked by
// validate_tables_disjoint.
template <class Table, class Reads, class Writes>
void validate_across_tables(std::span<const Table> tables, workspace::impl& ws, Reads&& reads_of, Writes&& writes_of) {
  std::vector<table_range>& reads = ws.batched_reads;
  std::vector<table_range>& writes = ws.batched_writes;
  reads.clear();
  writes.clear();
  reserved(reads, tables.size() * call_inputs::most, "the ranges a batched call reads");
  reserved(writes, tables.size() * 3, "the ranges a batched call writes");  // two outputs at most, and a report
  for (std::size_t t = 0; t < tables.size(); ++t) {
    const call_inputs inputs = reads_of(t);  // named: a range-for over reads_of(t).span() would outlive it
    for (const byte_range& in : inputs.span()) reads.push_back({t, in, {}});
    writes_of(t, [&](const byte_range& out, std::optional<output_cells> cells) { writes.push_back({t, out, cells}); });
    writes.push_back({t, report_bytes(tables[t].opts), {}});
  }
  validate_tables_disjoint(reads, writes);
}

}  // namespace

batched_forward_call validate_forward_batched(std::span<const table_lookup> tables, const execution& how,
                                              workspace::impl& ws) {
  validate_execution(how);
  std::vector<forward_request>& requests = ws.batched_requests;
  const auto validate_one = [&](std::size_t t, std::vector<std::int64_t>& rewritten) {
    const table_lookup& l = tables[t];
    if (l.opts.max_norm && l.opts.max_norm_mode == max_norm_flavour::in_place)
      throw error(errc::invalid_option, "max_norm in place in a batched call (other tables' lookups may read the table): clip instead");
    return validate_forward(stored(l.table), l.batch, l.opts, l.out, {}, rewritten);
  };
  validate_each_table(tables, requests, ws, "the requests of a batched forward", validate_one);
  validate_across_tables(
      tables, ws,
      [&](std::size_t t) {
        const forward_request& r = requests[t];
        return call_inputs(tables[t].batch, tables[t].opts,
                           {"table", r.table, r.rows == 0 ? 0 : (r.rows - 1) * r.row_stride + r.row_bytes});
      },
      [&](std::size_t t, auto add) {
        const output_view& out = tables[t].out;
        const output_cells cells{out.data, rows_of(requests[t].bags, tables[t].opts.mode), requests[t].dim,
                                 out.row_stride == 0 ? out.cols : out.row_stride, output_element_bytes(out.type)};
        add(cells.bytes("out"), cells);
      });
  return {requests, ws.batched_censuses, resolve_isa(how.isa), how};
}

namespace {

// What every form of backward checks: options, bags, dY and argmax against a table of
// table_rows x dim.
backward_call validate_backward_inputs(std::int64_t table_rows, std::int64_t dim, const bags& batch, const options& opts,
                                       matrix_view<const float> grad_output, std::span<const std::int64_t> argmax,
                                       std::vector<std::int64_t>& rewritten) {
  const std::int64_t padding = validate_options(opts, table_rows);
  index_census census;
  const bag_source bags = validate_bags(batch, opts, table_rows, padding, rewritten, census);
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
  backward_call call{{{}, census, resolve_isa(opts.execution.isa), opts.execution},
                     call_inputs(batch, opts, matrix_bytes("grad_output", grad_output.data, out_rows, dim, grad_stride))};
  call.inputs.add({"argmax", argmax.data(), static_cast<std::int64_t>(argmax.size_bytes())});
  backward_request& r = call.req;
  r.bags = bags;
  r.rows = table_rows;
  r.dim = dim;
  r.reduce = reduction_of(opts.mode);
  r.padding_idx = padding;
  r.scale_grad_by_freq = opts.scale_grad_by_freq;
  r.grad_output = grad_output.data;
  r.grad_output_stride = grad_stride;
  r.argmax = argmax.empty() ? nullptr : argmax.data();
  return call;
}

}  // namespace

backward_call validate_backward_dense(const bags& batch, const options& opts, matrix_view<const float> grad_output,
                                      matrix_view<float> grad_table, std::span<const std::int64_t> argmax,
                                      std::vector<std::int64_t>& rewritten) {
  const std::int64_t stride =
      validate_matrix("grad_table", grad_table.data, grad_table.rows, grad_table.cols, grad_table.row_stride);
  backward_call call =
      validate_backward_inputs(grad_table.rows, grad_table.cols, batch, opts, grad_output, argmax, rewritten);
  const byte_range outputs[] = {matrix_bytes("grad_table", grad_table.data, grad_table.rows, grad_table.cols, stride),
                                report_bytes(opts)};
  validate_disjoint(outputs, call.inputs.span());
  call.req.grad_table = grad_table.data;
  call.req.grad_table_stride = stride;
  return call;
}

backward_call validate_backward_sparse(std::int64_t table_rows, const bags& batch, const options& opts,
                                       matrix_view<const float> grad_output, std::span<const std::int64_t> argmax,
                                       std::vector<std::int64_t>& rewritten) {
  if (table_rows < 0)
    throw error(errc::invalid_shape, "table_rows = " + std::to_string(table_rows) + " must be >= 0");
  backward_call call = validate_backward_inputs(table_rows, grad_output.cols, batch, opts, grad_output, argmax, rewritten);
  const byte_range outputs[] = {report_bytes(opts)};
  validate_disjoint(outputs, call.inputs.span());
  return call;
}

namespace {

// What a table of a batched backward reads: its bags, dY and argmax.
call_inputs gradient_inputs(const table_gradient& t, const backward_request& r) {
  call_inputs inputs(t.batch, t.opts,
                     matrix_bytes("grad_output", r.grad_output, rows_of(r.bags, t.opts.mode), r.dim, r.grad_output_stride));
  inputs.add({"argmax", t.argmax.data(), static_cast<std::int64_t>(t.argmax.size_bytes())});
  return inputs;
}

}  // namespace

batched_backward_call validate_backward_batched(std::span<const table_gradient> tables,
                                                std::span<const matrix_view<float>> grad_tables,
                                                std::span<const sparse_gradient> grads, const execution& how,
                                                workspace::impl& ws) {
  validate_execution(how);
  std::vector<backward_request>& requests = ws.batched_gradients;
  const bool dense = grads.empty();
  const std::size_t outputs = dense ? grad_tables.size() : grads.size();
  if (outputs != tables.size())
    throw error(errc::size_mismatch, std::to_string(tables.size()) + " tables and " + std::to_string(outputs) +
                                         (dense ? " grad_tables" : " grads"));
  const auto validate_one = [&](std::size_t t, std::vector<std::int64_t>& rewritten) {
    const table_gradient& g = tables[t];
    if (dense && grad_tables[t].rows != g.table_rows)
      throw error(errc::size_mismatch, "grad_table has " + std::to_string(grad_tables[t].rows) +
                                           " rows; the table has table_rows = " + std::to_string(g.table_rows));
    return dense ? validate_backward_dense(g.batch, g.opts, g.grad_output, grad_tables[t], g.argmax, rewritten)
                 : validate_backward_sparse(g.table_rows, g.batch, g.opts, g.grad_output, g.argmax, rewritten);
  };
  validate_each_table(tables, requests, ws, "the requests of a batched backward", validate_one);
  validate_across_tables(
      tables, ws, [&](std::size_t t) { return gradient_inputs(tables[t], requests[t]); },
      [&](std::size_t t, auto add) {
        // the dense gradient, or the storage the sparse one may reuse
        if (dense) {
          const backward_request& r = requests[t];
          const output_cells cells{r.grad_table, r.rows, r.dim, r.grad_table_stride, sizeof(float)};
          return add(cells.bytes("grad_table"), cells);
        }
        const sparse_gradient& g = grads[t];
        add({"grads.rows", g.rows.data(), static_cast<std::int64_t>(g.rows.capacity() * sizeof(std::int64_t))}, {});
        add({"grads.values", g.values.data(), static_cast<std::int64_t>(g.values.capacity() * sizeof(float))}, {});
      });
  return {requests, ws.batched_censuses, resolve_isa(how.isa), how};
}

weights_grad_call validate_weights_grad(const stored_table& t, const bags& batch, const options& opts,
                                        matrix_view<const float> grad_output, std::span<float> grad_weights,
                                        std::vector<std::int64_t>& rewritten) {
  const std::int64_t padding = validate_options(opts, t.rows);
  index_census census;
  const bag_source bags = validate_bags(batch, opts, t.rows, padding, rewritten, census);
  if (bags.weights == nullptr && bags.nnz > 0)
    throw error(errc::invalid_option, "per_sample_weights_grad needs per_sample_weights");
  if (!takes_weights(reduction_of(opts.mode)))
    throw error(errc::invalid_option, "per_sample_weights_grad is defined for mode sum, mean and sqrtn only");
  const std::int64_t grad_stride = validate_input("grad_output", grad_output, bags.num_bags, t.dim);
  if (static_cast<std::int64_t>(grad_weights.size()) != bags.nnz)
    throw error(errc::size_mismatch, "grad_weights has " + std::to_string(grad_weights.size()) +
                                         " entries but indices has " + std::to_string(bags.nnz));
  validate_array("grad_weights", grad_weights.data(), bags.nnz, sizeof(float));
  call_inputs inputs(batch, opts, t.bytes());
  inputs.add(matrix_bytes("grad_output", grad_output.data, bags.num_bags, t.dim, grad_stride));
  const byte_range outputs[] = {
      {"grad_weights", grad_weights.data(), static_cast<std::int64_t>(grad_weights.size_bytes())}, report_bytes(opts)};
  validate_disjoint(outputs, inputs.span());
  weights_grad_call call{{}, census, resolve_isa(opts.execution.isa), opts.execution};
  call.req.forward = forward_request_for(t, bags, opts, padding);
  call.req.grad_output = grad_output.data;
  call.req.grad_output_stride = grad_stride;
  call.req.grad_weights = grad_weights.data();
  return call;
}

batched_weights_grad_call validate_weights_grad_batched(std::span<const table_weights_gradient> tables,
                                                        const execution& how, workspace::impl& ws) {
  validate_execution(how);
  std::vector<weights_grad_request>& requests = ws.batched_weights_grads;
  validate_each_table(tables, requests, ws, "the requests of a batched weights gradient",
                      [&](std::size_t t, std::vector<std::int64_t>& rewritten) {
                        const table_weights_gradient& g = tables[t];
                        return validate_weights_grad(stored(g.table), g.batch, g.opts, g.grad_output, g.grad_weights,
                                                     rewritten);
                      });
  validate_across_tables(
      tables, ws,
      [&](std::size_t t) {
        const weights_grad_request& r = requests[t];
        call_inputs inputs(tables[t].batch, tables[t].opts, stored(tables[t].table).bytes());
        inputs.add(matrix_bytes("grad_output", r.grad_output, r.forward.bags.num_bags, r.forward.dim, r.grad_output_stride));
        return inputs;
      },
      [&](std::size_t t, auto add) {
        const std::span<float> g = tables[t].grad_weights;
        add({"grad_weights", g.data(), static_cast<std::int64_t>(g.size_bytes())}, {});
      });
  return {requests, ws.batched_censuses, resolve_isa(how.isa), how};
}

namespace {

// What both forms of an update write, and the request's table, state and optimizer.
struct update_target {
  update_request req;
  byte_range table{"table", nullptr, 0}, state{"state", nullptr, 0};
};

std::string shape(std::int64_t rows, std::int64_t cols) { return std::to_string(rows) + " x " + std::to_string(cols); }

update_target validate_update_target(const trainable_table_view& table, const optimizer& opt,
                                     const optimizer_state& state) {
  if (table.type != dtype::f32 && table.type != dtype::f16 && table.type != dtype::bf16)
    throw error(errc::invalid_option, "an optimizer updates tables of f32, f16 or bf16, not " +
                                          std::string(to_string(table.type)));
  const std::int64_t element_bytes = table.type == dtype::f32 ? 4 : 2;
  const std::int64_t stride = validate_matrix("table", table.data, table.rows, table.dim, table.row_stride, element_bytes);
  if (std::find(std::begin(all_optimizers), std::end(all_optimizers), opt.kind) == std::end(all_optimizers))
    throw error(errc::invalid_option, "optimizer.kind = " + std::to_string(static_cast<int>(opt.kind)) + " is no optimizer");
  const auto nonnegative = [](const char* name, float value) {
    if (!std::isfinite(value) || value < 0.0f)
      throw error(errc::invalid_option, std::string("optimizer.") + name + " = " + std::to_string(value) +
                                            " must be finite and >= 0");
  };
  nonnegative("learning_rate", opt.learning_rate);
  nonnegative("eps", opt.eps);
  nonnegative("weight_decay", opt.weight_decay);
  if (opt.rounding != rounding_mode::nearest && opt.rounding != rounding_mode::stochastic)
    throw error(errc::invalid_option, "optimizer.rounding = " + std::to_string(static_cast<int>(opt.rounding)) +
                                          " is neither nearest nor stochastic");
  update_target target;
  update_request& q = target.req;
  std::int64_t state_stride = 0;
  if (opt.kind == optimizer_kind::sgd) {
    if (state.data != nullptr || state.rows != 0 || state.cols != 0)
      throw error(errc::invalid_option, "sgd keeps no state: pass an empty state, not one of " + shape(state.rows, state.cols));
  } else {
    const bool per_element = opt.kind == optimizer_kind::adagrad;
    const std::int64_t cols = per_element ? table.dim : 1;
    if (state.rows != table.rows || state.cols != cols)
      throw error(errc::size_mismatch, "state is " + shape(state.rows, state.cols) + "; " +
                                           std::string(to_string(opt.kind)) + "'s is " + shape(table.rows, cols) +
                                           (per_element ? " (the table's shape)" : " (one float per table row)"));
    state_stride = validate_matrix("state", state.data, state.rows, state.cols, state.row_stride);
    target.state = matrix_bytes("state", state.data, state.rows, state.cols, state_stride);
  }
  target.table = matrix_bytes("table", table.data, table.rows, table.dim, stride, element_bytes);
  q.table = static_cast<std::byte*>(table.data);
  q.table_type = table.type;
  q.table_stride = stride;
  q.state = opt.kind == optimizer_kind::sgd ? nullptr : state.data;
  q.state_stride = state_stride;
  q.kind = opt.kind;
  q.learning_rate = opt.learning_rate;
  q.eps = opt.eps;
  q.weight_decay = opt.weight_decay;
  q.rounding = opt.rounding;
  q.seed = opt.seed;
  q.gradient.dim = table.dim;
  q.gradient.rows = table.rows;
  return target;
}

}  // namespace

update_call validate_backward_update(const trainable_table_view& table, const bags& batch, const options& opts,
                                     matrix_view<const float> grad_output, const optimizer& opt,
                                     const optimizer_state& state, std::span<const std::int64_t> argmax,
                                     std::vector<std::int64_t>& rewritten) {
  update_target target = validate_update_target(table, opt, state);
  backward_call backward = validate_backward_inputs(table.rows, table.dim, batch, opts, grad_output, argmax, rewritten);
  const byte_range outputs[] = {target.table, target.state, report_bytes(opts)};
  validate_disjoint(outputs, backward.inputs.span());
  target.req.gradient = backward.req;
  return {target.req, backward.census, backward.which, backward.how};
}

batched_update_call validate_backward_update_batched(std::span<const table_update> tables,
                                                     std::span<const update_summary> summaries, const execution& how,
                                                     workspace::impl& ws) {
  validate_execution(how);
  if (summaries.size() != tables.size())
    throw error(errc::size_mismatch, std::to_string(tables.size()) + " tables and " + std::to_string(summaries.size()) +
                                         " summaries");
  std::vector<update_request>& requests = ws.batched_updates;
  validate_each_table(tables, requests, ws, "the requests of a batched update",
                      [&](std::size_t t, std::vector<std::int64_t>& rewritten) {
                        const table_update& u = tables[t];
                        return validate_backward_update(u.table, u.batch, u.opts, u.grad_output, u.opt, u.state,
                                                        u.argmax, rewritten);
                      });
  validate_across_tables(
      tables, ws,
      [&](std::size_t t) {
        const backward_request& r = requests[t].gradient;
        call_inputs inputs(tables[t].batch, tables[t].opts,
                           matrix_bytes("grad_output", r.grad_output, rows_of(r.bags, tables[t].opts.mode), r.dim,
                                        r.grad_output_stride));
        inputs.add({"argmax", tables[t].argmax.data(), static_cast<std::int64_t>(tables[t].argmax.size_bytes())});
        return inputs;
      },
      [&](std::size_t t, auto add) {
        const update_request& q = requests[t];
        const output_cells table{q.table, q.gradient.rows, q.gradient.dim, q.table_stride,
                                 q.table_type == dtype::f32 ? 4 : 2};
        add(table.bytes("table"), table);
        if (q.state == nullptr) return;
        const output_cells state{q.state, q.gradient.rows, q.kind == optimizer_kind::adagrad ? q.gradient.dim : 1,
                                 q.state_stride, sizeof(float)};
        add(state.bytes("state"), state);
      });
  const byte_range summary_bytes{"summaries", summaries.data(), static_cast<std::int64_t>(summaries.size_bytes())};
  for (const std::vector<table_range>* ranges : {&ws.batched_reads, &ws.batched_writes})
    for (const table_range& r : *ranges)
      if (overlap(summary_bytes, r.bytes))
        throw error(errc::aliasing, "summaries overlaps " + table_name(r.table) + "'s " + r.bytes.name);
  return {requests, ws.batched_censuses, resolve_isa(how.isa), how};
}

update_call validate_apply_sparse_gradient(const trainable_table_view& table, std::span<const std::int64_t> rows,
                                           std::span<const float> values, std::int64_t dim, const optimizer& opt,
                                           const optimizer_state& state, const execution& how) {
  validate_execution(how);
  update_target target = validate_update_target(table, opt, state);
  const auto count = static_cast<std::int64_t>(rows.size());
  if (dim != table.dim)
    throw error(errc::size_mismatch, "grad.dim = " + std::to_string(dim) + " differs from the table's dim " +
                                         std::to_string(table.dim));
  if (static_cast<std::int64_t>(values.size()) != count * table.dim)
    throw error(errc::size_mismatch, "grad.values has " + std::to_string(values.size()) + " floats; " +
                                         std::to_string(count) + " rows of dim " + std::to_string(table.dim) +
                                         " need " + std::to_string(count * table.dim));
  validate_array("grad.rows", rows.data(), count, sizeof(std::int64_t));
  validate_array("grad.values", values.data(), static_cast<std::int64_t>(values.size()), sizeof(float));
  for (std::int64_t u = 0; u < count; ++u) {
    const std::int64_t row = rows[static_cast<std::size_t>(u)];
    if (row < 0 || row >= table.rows)
      throw error(errc::index_out_of_range, "grad.rows[" + std::to_string(u) + "] = " + std::to_string(row) +
                                                " is outside the table's " + std::to_string(table.rows) + " rows");
    if (u > 0 && row <= rows[static_cast<std::size_t>(u - 1)])
      throw error(errc::invalid_option, "grad.rows must ascend without repeats: grad.rows[" + std::to_string(u) +
                                            "] = " + std::to_string(row) + " follows " +
                                            std::to_string(rows[static_cast<std::size_t>(u - 1)]));
  }
  const byte_range inputs[] = {{"grad.rows", rows.data(), static_cast<std::int64_t>(rows.size_bytes())},
                               {"grad.values", values.data(), static_cast<std::int64_t>(values.size_bytes())}};
  const byte_range outputs[] = {target.table, target.state};
  validate_disjoint(outputs, inputs);
  update_request& q = target.req;
  q.gradient.transpose.unique_rows = rows.data();
  q.gradient.transpose.num_unique = count;
  q.given_gradient = values.data();
  return {q, {}, resolve_isa(how.isa), how};
}

}  // namespace embag::detail
