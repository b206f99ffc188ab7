// Entry points: each builds its validated call (call.hpp), then executes it: plan, then the
// reference or an ISA's kernels. Nothing is written before the last check has passed.
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

#include "embag/batched.hpp"
#include "embag/optim.hpp"
#include "embag/quantize.hpp"
#include "embag/roofline.hpp"
#include "allocation.hpp"
#include "call.hpp"
#include "dispatch/dispatch.hpp"
#include "formats/codecs.hpp"
#include "parallel.hpp"
#include "plan.hpp"
#include "reference/reference.hpp"
#include "validate.hpp"
#include "workspace.hpp"

namespace embag {
namespace {

using namespace detail;

// How a batched call too small to thread runs its blocks: inline, no TBB.
const execution inline_execution = [] {
  execution how;
  how.max_threads = 1;
  return how;
}();

// A batch's blocks, every table's in one list (plan_batched_forward_blocks, into ws), and how to
// run them: inline when the whole batch is too little work to split.
struct batch_plan {
  std::span<const table_block> blocks;
  const execution& how;
};

batch_plan plan_batch(std::span<const forward_request> requests, const execution& how, workspace::impl& ws) {
  const int threads = plan_batched_forward_blocks(requests, threads_for(how), ws.batched_blocks);
  return {ws.batched_blocks, threads == 1 ? inline_execution : how};
}

// The caller's workspace, or a fresh one for this call only when it gave none.
class scratch_or_local {
 public:
  explicit scratch_or_local(workspace* scratch) : scratch_(scratch) {
    if (scratch_ == nullptr) scratch_ = &local_.emplace();
  }
  workspace::impl& get() { return scratch_->get(); }
  workspace& whole() { return *scratch_; }

 private:
  workspace* scratch_;
  std::optional<workspace> local_;
};

// The reference's forward; into a 16-bit output, through an fp32 copy of the whole output rounded
// by the scalar codec (the oracle of the kernels' staged rounding).
void reference_forward(forward_request req) {
  if (req.narrowed.type == dtype::f32) return reference::forward(req);
  const std::int64_t rows = req.reduce.pool == pooling::lookup ? req.bags.nnz : req.bags.num_bags;
  std::vector<float> all = allocated<float>(static_cast<std::size_t>(rows * req.dim), "the reference's fp32 output");
  req.out = all.data();
  req.out_stride = req.dim;
  reference::forward(req);
  for (std::int64_t r = 0; r < rows; ++r)
    narrow_halves(all.data() + r * req.dim, req.dim, req.narrowed.type, req.narrowed.data + 2 * r * req.narrowed.stride);
}

// One block of a forward: straight into an f32 output; into a 16-bit one, in parts whose fp32 rows
// fill the 16 KiB stage on this thread's stack (cache-resident: written, then read once as they are
// rounded into the output), so that a 16-bit output costs little over an f32 one.
void forward_block(const kernel_table& k, const forward_request& req, const bag_block& block) {
  if (req.narrowed.type == dtype::f32) return k.forward(req, block);
  alignas(64) float stage[narrowing_stage_floats];
  forward_request staged = req;
  staged.out = stage;
  staged.out_stride = req.dim;
  const std::int64_t most = std::max<std::int64_t>(1, narrowing_stage_floats / req.dim);
  for (bag_block rest = block; rest.bag_begin < rest.bag_end;) {
    const bag_block part = take_front(req.bags, req.reduce.pool, rest, most);
    staged.out_first_bag = part.bag_begin;
    k.forward(staged, part);
    k.narrow_rows(stage, part.bag_end - part.bag_begin, req.dim, req.narrowed, part.bag_begin);
  }
}

// may_trial = false: a forward whose time is not a table's lookups (a backward's) does not put
// the prefetch on trial (choose_prefetch).
void run_forward(isa which, forward_request& req, const execution& how, bool may_trial = true) {
  if (which == isa::reference) return reference_forward(req);
  choose_prefetch(req, how.prefetch, may_trial);
  bag_blocks plan;
  plan_forward_blocks(req.bags, req.reduce.pool, req.dim, threads_for(how), plan);
  const kernel_table& k = kernels_of(which);
  using clock = std::chrono::steady_clock;
  const clock::time_point start = req.prefetch_trial >= 0 ? clock::now() : clock::time_point{};
  run_blocks(plan.count, how, [&](std::int64_t i) { forward_block(k, req, plan.blocks[i]); });
  if (req.prefetch_trial >= 0) report_prefetch_trial(req, std::chrono::duration<double>(clock::now() - start).count());
}

// The sparse gradient of a pooled sum (sum, mean, sqrtn, none) is itself a forward: dW = A^T dY,
// so gradient row u is the sum, over unique row u's positions in position order, of their bags'
// dY rows times their coefficients. As a forward over the table dY, its bags are the transpose's
// segments, their indices the positions' bags and their weights the coefficients; the forward's
// arithmetic (acc = 0; acc += w_j x_j) is backward's, element by element, so the bits are the
// same. Its kernels keep a row's sum in registers where backward_rows read and wrote it in memory
// at every position (a hot row of Zipf ids has many: the DLRM workload's batched sparse backward
// went from 3.1-3.3x its forward's time to 2.5-2.6x, `embag bench --workload dlrm --scale 0.1`).
// The optimizers' fused steps compute their gradient rows the same way (update_rows), chunk by
// chunk into scratch rows: the caller points the forward's output.
bool is_sparse_sums(const backward_request& r) { return r.sparse_values != nullptr && r.reduce.pool != pooling::max; }

forward_request sums_gradient_as_forward(const backward_request& r) {
  const row_transpose& t = r.transpose;
  bag_source segments;
  segments.indices = t.bags;
  segments.nnz = t.segment_begin[t.num_unique];
  segments.boundaries = t.segment_begin;
  segments.num_boundaries = t.num_unique + 1;
  segments.num_bags = t.num_unique;
  segments.weights = t.coefficients;
  segments.one_index_each = segments.nnz == t.num_unique;  // then segment u is position u
  const std::int64_t dy_rows = r.reduce.pool == pooling::lookup ? r.bags.nnz : r.bags.num_bags;
  forward_request f = forward_request_for(stored(table_view<const float>{r.grad_output, dy_rows, r.dim, r.grad_output_stride}),
                                          segments, options{}, no_padding);
  f.out_stride = r.dim;
  return f;
}

// The kernels over blocks of unique rows of r.transpose.
void run_row_kernels(isa which, const backward_request& r, const execution& how) {
  if (is_sparse_sums(r)) {
    forward_request f = sums_gradient_as_forward(r);
    f.out = r.sparse_values;
    return run_forward(which, f, how, false);
  }
  range_blocks plan;
  plan_row_blocks(r.transpose, r.dim, threads_for(how), plan);
  const kernel_table& k = kernels_of(which);
  run_blocks(plan.count, how, [&](std::int64_t i) { k.backward_rows(r, plan.blocks[i].begin, plan.blocks[i].end); });
}

// Dense pooled sums (sum, mean, sqrtn) without scale_grad_by_freq: straight from the bags, the table's rows split
// over the threads.
void run_scatter_kernels(isa which, backward_request& r, const execution& how) {
  choose_scatter_prefetch(r, how.prefetch);
  range_blocks plan;
  plan_row_ranges(r.rows, 2 * r.bags.nnz * r.dim, threads_for(how), plan);
  const kernel_table& k = kernels_of(which);
  run_blocks(plan.count, how, [&](std::int64_t i) { k.backward_scatter(r, plan.blocks[i].begin, plan.blocks[i].end); });
}

// gather_roofline's state: the validated call, planned once.
struct roofline_call {
  forward_request req;
  bag_blocks plan;
  const kernel_table* kernels = nullptr;
  execution how;
};

// A forward sum call with the roofline's own limits: offsets of the indices' type, no weights, a
// SIMD ISA.
roofline_call prepare_roofline(const stored_table& t, const bags& batch, matrix_view<float> out, const execution& how) {
  options opts;
  opts.execution = how;
  validate_options(opts, t.rows);
  if (batch.layout != bag_layout::offsets || batch.boundaries.type != batch.indices.type)
    throw error(errc::invalid_option, "gather_roofline takes bags given by offsets of the indices' own type");
  if (!batch.per_sample_weights.empty())
    throw error(errc::invalid_option, "gather_roofline sums rows unweighted: it takes no per_sample_weights");
  std::vector<std::int64_t> never_rewritten;  // default options have no index policy
  const forward_call sum = validate_forward(t, batch, opts, out, {}, never_rewritten);
  if (sum.which == isa::reference)
    throw error(errc::unsupported_isa, "gather_roofline measures the memory system: it needs a SIMD ISA, not reference");
  roofline_call call{sum.req, {}, &kernels_of(sum.which), how};
  choose_prefetch(call.req, how.prefetch, /*may_trial=*/false);  // its times are not forward's
  plan_forward_blocks(call.req.bags, pooling::sum, t.dim, threads_for(how), call.plan);
  return call;
}

// Backward's row transpose (plan.cpp): at most ten int64 arrays over the call's indices (each
// position's bag; the sort's entries and scratch, two words each at most; the sorted positions
// and their bags; the unique rows and where each starts; the coefficients, a float each), grown
// in the workspace.
row_transpose transposed(backward_request& r, const execution& how, transpose_buffers& buffers) {
  return allocating<std::int64_t>(static_cast<std::size_t>(r.bags.nnz) * 10,
                                  [&] { return "backward's row transpose of " + std::to_string(r.bags.nnz) + " indices"; },
                                  [&] { return build_row_transpose(r.bags, r.rows, r.padding_idx, r.reduce, r.scale_grad_by_freq, how, buffers); });
}

// The row transposes of a batch's tables, each in its own buffers, in one parallel loop over the
// tables (a large table's passes split further): a batch of small tables fills threads that no one
// of them could. gradient_of(t): table t's request, or null when it needs no transpose.
template <class GradientOf>
void transpose_tables(std::int64_t count, const GradientOf& gradient_of, const execution& how, workspace::impl& ws) {
  if (std::ssize(ws.table_transposes) < count)
    resized(ws.table_transposes, static_cast<std::size_t>(count), "the row transposes of " + std::to_string(count) + " tables");
  run_blocks(count, how, [&](std::int64_t t) {
    if (backward_request* r = gradient_of(t)) r->transpose = transposed(*r, how, ws.table_transposes[static_cast<std::size_t>(t)]);
  });
}

// The (table, block of its unique rows) pairs of one parallel loop over a batch's tables, in table
// order; plan_of(t, plan) cuts table t's rows as its own call would.
template <class PlanOf>
std::span<const table_rows_block> plan_tables(std::int64_t count, const PlanOf& plan_of, workspace::impl& ws) {
  std::vector<table_rows_block>& blocks = ws.table_row_blocks;
  blocks.clear();
  range_blocks plan;
  for (std::int64_t t = 0; t < count; ++t) {
    plan_of(t, plan);
    reserved(blocks, blocks.size() + static_cast<std::size_t>(plan.count), "the blocks of " + std::to_string(count) + " tables");
    for (int i = 0; i < plan.count; ++i) blocks.push_back({t, plan.blocks[i]});
  }
  return blocks;
}

// Every table's sparse gradient: the pooled sums' as one batched forward (a parallel loop over
// every such table's blocks), max's by the row kernels in a parallel loop over (table, block of
// its unique rows) pairs.
void run_row_kernels_batched(isa which, std::span<const backward_request> tables, const execution& how,
                             workspace::impl& ws) {
  const kernel_table& k = kernels_of(which);
  std::vector<forward_request>& sums = ws.batched_requests;
  reserved(sums, tables.size(), "the forwards of a batched sparse gradient");
  sums.clear();
  for (const backward_request& r : tables)
    if (is_sparse_sums(r)) {
      sums.push_back(sums_gradient_as_forward(r));
      sums.back().out = r.sparse_values;
    }
  for (forward_request& f : sums) choose_prefetch(f, how.prefetch, false);
  const batch_plan forwards = plan_batch(sums, how, ws);
  run_blocks(std::ssize(forwards.blocks), forwards.how, [&](std::int64_t i) {
    forward_block(k, sums[static_cast<std::size_t>(forwards.blocks[i].table)], forwards.blocks[i].block);
  });

  const int threads = threads_for(how);
  const auto blocks = plan_tables(
      std::ssize(tables),
      [&](std::int64_t t, range_blocks& plan) {
        if (is_sparse_sums(tables[t])) plan.count = 0;
        else plan_row_blocks(tables[t].transpose, tables[t].dim, threads, plan);
      },
      ws);
  run_blocks(std::ssize(blocks), how, [&](std::int64_t i) {
    const table_rows_block& b = blocks[static_cast<std::size_t>(i)];
    k.backward_rows(tables[static_cast<std::size_t>(b.table)], b.rows.begin, b.rows.end);
  });
}

// The scalar oracle's backward, which sorts a copy of the call's (row, position) pairs.
void reference_backward(const backward_request& r, sparse_gradient* grad) {
  allocating<std::int64_t>(static_cast<std::size_t>(r.bags.nnz) * 2,
                           [&] { return "the reference backward of " + std::to_string(r.bags.nnz) + " indices"; },
                           [&] { reference::backward(r, grad); });
}

void add_tally(update_summary& summary, const update_tally& t) {
  summary.rows_updated += t.updated;
  if (t.not_finite > 0 && summary.rows_not_finite == 0) summary.first_not_finite_row = t.first_not_finite;
  summary.rows_not_finite += t.not_finite;
}

// The reference's step: its backward's sparse gradient (fused), then the formulas row by row.
update_summary reference_update(update_request q) {
  const std::int64_t dim = q.gradient.dim;
  sparse_gradient grad;
  if (q.given_gradient == nullptr) {
    reference_backward(q.gradient, &grad);
    q.gradient.transpose.unique_rows = grad.rows.data();
    q.gradient.transpose.num_unique = static_cast<std::int64_t>(grad.rows.size());
    q.given_gradient = grad.values.data();
  }
  update_tally tally;
  allocating<float>(static_cast<std::size_t>(dim) * 4, [&] { return "the reference update's rows of " + std::to_string(dim); },
                    [&] { reference::update(q, tally); });
  update_summary summary;
  add_tally(summary, tally);
  return summary;
}

// Validated updates' plan, before any step: every fused table's transpose at once, the fetch of
// their rows (put on trial only when may_trial), and the (table, block of unique rows) pairs of
// one parallel loop, in ws. What the steps and the update's roofline share.
struct update_plan {
  update_fetch_trial fetch_trial;
  std::span<const table_rows_block> blocks;
  std::int64_t scratch_per_block = 0, widest = 0;  // floats; a row's dim
};
update_plan plan_updates(std::span<update_request> tables, const execution& how, bool may_trial, workspace::impl& ws) {
  const auto count = std::ssize(tables);
  for (update_request& q : tables) choose_scatter_prefetch(q.gradient, how.prefetch);
  transpose_tables(
      count, [&](std::int64_t t) { return tables[t].given_gradient == nullptr ? &tables[t].gradient : nullptr; }, how, ws);
  update_plan plan;
  plan.fetch_trial = choose_update_fetch(tables, how.prefetch, may_trial);  // by the transposes' unique rows
  for (update_request& q : tables)
    if (q.given_gradient == nullptr && q.gradient.reduce.pool != pooling::max) {
      q.sums_gradient = sums_gradient_as_forward(q.gradient);
      choose_prefetch(q.sums_gradient, how.prefetch, false);
    }
  const int threads = threads_for(how);
  plan.blocks = plan_tables(
      count,
      [&](std::int64_t t, range_blocks& blocks) {
        const backward_request& r = tables[t].gradient;
        plan.scratch_per_block = std::max(plan.scratch_per_block, update_scratch_floats(tables[t]));
        plan.widest = std::max(plan.widest, r.dim);
        if (tables[t].given_gradient == nullptr) plan_row_blocks(r.transpose, r.dim, threads, blocks);
        else plan_even_blocks(r.transpose.num_unique, r.dim, threads, blocks);
      },
      ws);
  return plan;
}

// Validated updates' steps, summaries[t] table t's. An ISA: the plan (plan_updates), then one
// parallel loop over its blocks, each with its own scratch rows (a cache line apart) and tally,
// merged per table in row order.
void run_updates(std::span<update_request> tables, isa which, const execution& how, std::span<update_summary> summaries,
                 workspace::impl& ws) {
  const auto count = std::ssize(tables);
  if (which == isa::reference) {
    for (std::int64_t t = 0; t < count; ++t) summaries[t] = reference_update(tables[t]);
    return;
  }
  const update_plan plan = plan_updates(tables, how, /*may_trial=*/true, ws);
  const std::span<const table_rows_block> blocks = plan.blocks;
  const std::int64_t per_block = plan.scratch_per_block;
  const auto scratch_floats = static_cast<std::size_t>(per_block) * blocks.size();
  allocating<float>(scratch_floats + blocks.size() * sizeof(update_tally) / sizeof(float),
                    [&] { return "an update's scratch rows of " + std::to_string(plan.widest); },
                    [&] {
                      if (ws.update_scratch.size() < scratch_floats) ws.update_scratch.resize(scratch_floats);
                      ws.update_tallies.assign(blocks.size(), update_tally{});
                    });
  const kernel_table& k = kernels_of(which);
  float* const scratch = ws.update_scratch.data();
  const update_fetch_trial& fetch_trial = plan.fetch_trial;
  using clock = std::chrono::steady_clock;
  const clock::time_point start = fetch_trial.candidate >= 0 ? clock::now() : clock::time_point{};
  run_blocks(std::ssize(blocks), how, [&](std::int64_t i) {
    const table_rows_block& b = blocks[static_cast<std::size_t>(i)];
    k.update_rows(tables[b.table], b.rows.begin, b.rows.end, scratch + i * per_block, ws.update_tallies[static_cast<std::size_t>(i)]);
  });
  if (fetch_trial.candidate >= 0)
    report_update_fetch_trial(fetch_trial, std::chrono::duration<double>(clock::now() - start).count());
  std::fill(summaries.begin(), summaries.end(), update_summary{});
  for (std::size_t i = 0; i < blocks.size(); ++i) add_tally(summaries[blocks[i].table], ws.update_tallies[i]);
}

update_summary run_update(update_call& call, workspace::impl& ws) {
  update_summary summary;
  run_updates({&call.req, 1}, call.which, call.how, {&summary, 1}, ws);
  return summary;
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

std::int64_t output_rows(const bags& batch, const options& opts) {
  if (reduction_of(opts.mode).pool == pooling::lookup) return batch.indices.size;
  switch (batch.layout) {
    case bag_layout::offsets: return batch.boundaries.size - (opts.include_last_offset ? 1 : 0);
    case bag_layout::lengths: return batch.boundaries.size;
    case bag_layout::fixed_length: return batch.fixed_length > 0 ? batch.indices.size / batch.fixed_length : 0;
  }
  return 0;
}

void detail::execute(forward_call& call, workspace* scratch) {
  call.census.publish();
  forward_request& req = call.req;
  if (call.renorm_table != nullptr) {
    scratch_or_local ws(scratch);
    renorm_distinct_rows(call.renorm_table, req.row_stride / 4, req.dim, req.bags.indices, req.bags.index_kind,
                         req.bags.nnz, req.max_norm, req.norm_type, ws.get());
  }
  run_forward(call.which, req, call.how);
}

// One parallel loop over every table's blocks; the prefetch per table, as its own call would
// choose it (a table past the LLC takes the candidate its trials decided: the batch cannot time
// one table alone).
void detail::execute(const batched_forward_call& call, workspace::impl& ws) {
  if (call.which == isa::reference) {
    for (const index_census& c : call.censuses) c.publish();
    for (forward_request& req : call.tables) reference_forward(req);
    return;
  }
  for (forward_request& req : call.tables) choose_prefetch(req, call.how.prefetch);
  const batch_plan plan = plan_batch(call.tables, call.how, ws);
  const std::span<const table_block> blocks = plan.blocks;
  // a table whose prefetch is on trial has its blocks timed, each into its own slot
  const bool on_trial = std::any_of(call.tables.begin(), call.tables.end(),
                                    [](const forward_request& req) { return req.prefetch_trial >= 0; });
  if (on_trial) resized(ws.batched_block_seconds, blocks.size(), "the times of a batched forward's blocks");
  for (const index_census& c : call.censuses) c.publish();  // once the plan's memory is there
  const kernel_table& k = kernels_of(call.which);
  run_blocks(static_cast<std::int64_t>(blocks.size()), plan.how,
             [&](std::int64_t i) {
               const forward_request& req = call.tables[blocks[i].table];
               if (req.prefetch_trial < 0) return forward_block(k, req, blocks[i].block);
               const auto start = std::chrono::steady_clock::now();
               forward_block(k, req, blocks[i].block);
               ws.batched_block_seconds[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
             });
  for (std::size_t i = 0; on_trial && i < blocks.size();) {  // each table's blocks, one after another
    const forward_request& req = call.tables[blocks[i].table];
    double seconds = 0;
    for (const std::int64_t table = blocks[i].table; i < blocks.size() && blocks[i].table == table; ++i)
      seconds += ws.batched_block_seconds[i];
    report_prefetch_trial(req, seconds);  // nothing unless on trial
  }
}

namespace {

// A validated dense backward: straight from the bags (no workspace needed), or through the row
// transpose.
void execute_backward(backward_request& r, isa which, const execution& how, workspace* scratch) {
  if (which == isa::reference) return reference_backward(r, nullptr);
  if (r.reduce.pool == pooling::sum && !r.scale_grad_by_freq) return run_scatter_kernels(which, r, how);
  scratch_or_local ws(scratch);
  r.transpose = transposed(r, how, ws.get().transpose);
  run_row_kernels(which, r, how);
}

}  // namespace

void detail::execute(backward_call& call, workspace* scratch) {
  call.census.publish();
  execute_backward(call.req, call.which, call.how, scratch);
}

// One parallel loop over every table's blocks, cut as a batched forward's over each table's bags.
void detail::execute(const batched_weights_grad_call& call, workspace::impl& ws) {
  if (call.which == isa::reference) {
    for (const index_census& c : call.censuses) c.publish();
    for (const weights_grad_request& r : call.tables) reference::weights_grad(r);
    return;
  }
  reserved(ws.batched_requests, call.tables.size(), "the requests of a batched weights gradient");
  ws.batched_requests.clear();
  for (const weights_grad_request& r : call.tables) ws.batched_requests.push_back(r.forward);
  const batch_plan plan = plan_batch(ws.batched_requests, call.how, ws);
  for (const index_census& c : call.censuses) c.publish();
  const kernel_table& k = kernels_of(call.which);
  run_blocks(std::ssize(plan.blocks), plan.how,
             [&](std::int64_t i) { k.weights_grad(call.tables[plan.blocks[i].table], plan.blocks[i].block); });
}

void detail::execute(const weights_grad_call& call) {
  call.census.publish();
  if (call.which == isa::reference) return reference::weights_grad(call.req);
  bag_blocks plan;
  const forward_request& f = call.req.forward;
  plan_forward_blocks(f.bags, f.reduce.pool, f.dim, threads_for(call.how), plan);
  const kernel_table& k = kernels_of(call.which);
  run_blocks(plan.count, call.how, [&](std::int64_t i) { k.weights_grad(call.req, plan.blocks[i]); });
}

namespace {

void forward_stored(const stored_table& table, const bags& batch, const options& opts, matrix_view<float> out,
                    std::span<std::int64_t> argmax, workspace* scratch) {
  std::vector<std::int64_t> own_indices;
  forward_call call = validate_forward(table, batch, opts, out, argmax, index_storage(scratch, own_indices));
  execute(call, scratch);
}

}  // namespace

void forward(table_view<const float> table, const bags& batch, const options& opts, matrix_view<float> out,
             std::span<std::int64_t> argmax, workspace* scratch) {
  forward_stored(stored(table), batch, opts, out, argmax, scratch);
}

void forward(table_view<float> table, const bags& batch, const options& opts, matrix_view<float> out,
             std::span<std::int64_t> argmax, workspace* scratch) {
  forward_stored(stored(table), batch, opts, out, argmax, scratch);
}

void forward(compressed_table_view table, const bags& batch, const options& opts, matrix_view<float> out,
             std::span<std::int64_t> argmax, workspace* scratch) {
  forward_stored(stored(table), batch, opts, out, argmax, scratch);
}

void concatenate_outputs(std::span<table_lookup> tables, output_view out) {
  std::int64_t cols = 0;
  for (const table_lookup& t : tables) cols += std::max<std::int64_t>(t.table.dim, 0);
  if (cols != out.cols)
    throw error(errc::invalid_shape, "out has " + std::to_string(out.cols) + " columns; the tables' dims sum to " +
                                         std::to_string(cols));
  const std::int64_t stride = out.row_stride == 0 ? out.cols : out.row_stride;
  std::int64_t column = 0;
  for (table_lookup& t : tables) {
    const std::int64_t offset = column * std::max<std::int64_t>(output_element_bytes(out.type), 1);
    t.out = {out.data == nullptr ? nullptr : static_cast<std::byte*>(out.data) + offset, out.rows, t.table.dim, stride,
             out.type};
    column += t.table.dim;
  }
}

void forward_batched(std::span<const table_lookup> tables, const execution& how, workspace* scratch) {
  scratch_or_local ws(scratch);
  const batched_forward_call call = validate_forward_batched(tables, how, ws.get());
  execute(call, ws.get());
}

void backward_dense(const bags& batch, const options& opts, matrix_view<const float> grad_output,
                    matrix_view<float> grad_table, std::span<const std::int64_t> argmax, workspace* scratch) {
  std::vector<std::int64_t> own_indices;
  backward_call call =
      validate_backward_dense(batch, opts, grad_output, grad_table, argmax, index_storage(scratch, own_indices));
  execute(call, scratch);
}

namespace {

// Room in grad for the sparse gradient of r's transpose: reserved before anything is written, so
// that if memory runs out, grad is still what it was.
void reserve_sparse_gradient(const backward_request& r, sparse_gradient& grad) {
  const std::int64_t unique = r.transpose.num_unique, dim = r.dim;
  allocating<float>(static_cast<std::size_t>(unique) * static_cast<std::size_t>(dim + 2),  // an int64 row is two floats
                    [&] { return "the sparse gradient of " + std::to_string(unique) + " rows x " + std::to_string(dim); },
                    [&] {
                      grad.rows.reserve(static_cast<std::size_t>(unique));
                      grad.values.reserve(static_cast<std::size_t>(unique * dim));
                    });
}

// grad's rows, from r's transpose, and its values as where r's row kernels write (reserved).
void aim_at_sparse_gradient(backward_request& r, sparse_gradient& grad) {
  const std::int64_t unique = r.transpose.num_unique;
  grad.dim = r.dim;
  grad.rows.assign(r.transpose.unique_rows, r.transpose.unique_rows + unique);
  grad.values.resize(static_cast<std::size_t>(unique * r.dim));
  r.sparse_values = grad.values.data();
}

// A validated sparse backward's gradient into grad, replacing its contents.
void sparse_gradient_of(backward_request& r, isa which, const execution& how, sparse_gradient& grad,
                        workspace::impl& ws) {
  if (which == isa::reference) return reference_backward(r, &grad);
  r.transpose = transposed(r, how, ws.transpose);
  reserve_sparse_gradient(r, grad);
  aim_at_sparse_gradient(r, grad);
  run_row_kernels(which, r, how);
}

}  // namespace

void backward_sparse(std::int64_t table_rows, const bags& batch, const options& opts,
                     matrix_view<const float> grad_output, sparse_gradient& grad,
                     std::span<const std::int64_t> argmax, workspace* scratch) {
  scratch_or_local ws(scratch);
  backward_call call = validate_backward_sparse(table_rows, batch, opts, grad_output, argmax, ws.get().rewritten_indices);
  const byte_range outputs[] = {
      {"grad.rows", grad.rows.data(), static_cast<std::int64_t>(grad.rows.capacity() * sizeof(std::int64_t))},
      {"grad.values", grad.values.data(), static_cast<std::int64_t>(grad.values.capacity() * sizeof(float))}};
  validate_disjoint(outputs, call.inputs.span());
  execute(call, grad, &ws.whole());
}

void detail::execute(backward_call& call, sparse_gradient& grad, workspace* scratch) {
  scratch_or_local ws(scratch);
  call.census.publish();
  sparse_gradient_of(call.req, call.which, call.how, grad, ws.get());
}

void backward_dense_batched(std::span<const table_gradient> tables, std::span<const matrix_view<float>> grad_tables,
                            const execution& how, workspace* scratch) {
  scratch_or_local ws(scratch);
  const batched_backward_call call = validate_backward_batched(tables, grad_tables, {}, how, ws.get());
  for (const index_census& c : call.censuses) c.publish();
  for (backward_request& r : call.tables) execute_backward(r, call.which, call.how, &ws.whole());
}

void backward_sparse_batched(std::span<const table_gradient> tables, std::span<sparse_gradient> grads,
                             const execution& how, workspace* scratch) {
  scratch_or_local ws(scratch);
  const batched_backward_call call = validate_backward_batched(tables, {}, grads, how, ws.get());
  for (const index_census& c : call.censuses) c.publish();
  if (call.which == isa::reference) {
    for (std::size_t t = 0; t < call.tables.size(); ++t) reference_backward(call.tables[t], &grads[t]);
    return;
  }
  transpose_tables(std::ssize(call.tables), [&](std::int64_t t) { return &call.tables[t]; }, call.how, ws.get());
  for (std::size_t t = 0; t < call.tables.size(); ++t) reserve_sparse_gradient(call.tables[t], grads[t]);
  for (std::size_t t = 0; t < call.tables.size(); ++t) aim_at_sparse_gradient(call.tables[t], grads[t]);
  run_row_kernels_batched(call.which, call.tables, call.how, ws.get());
}

void detail::backward_sparse_into(std::int64_t table_rows, const bags& batch, const options& opts,
                                  matrix_view<const float> grad_output, std::span<const std::int64_t> argmax,
                                  const sparse_gradient_buffers& out, std::int64_t& num_rows) {
  scratch_or_local ws(nullptr);
  backward_call call = validate_backward_sparse(table_rows, batch, opts, grad_output, argmax, ws.get().rewritten_indices);
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
  call.census.publish();

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
  backward_request& r = call.req;
  r.transpose = transposed(r, call.how, ws.get().transpose);
  count_rows(r.transpose.num_unique);
  r.sparse_values = out.values;
  run_row_kernels(call.which, r, call.how);
  std::copy(r.transpose.unique_rows, r.transpose.unique_rows + r.transpose.num_unique, out.rows.begin());
}

void per_sample_weights_grad_batched(std::span<const table_weights_gradient> tables, const execution& how,
                                     workspace* scratch) {
  scratch_or_local ws(scratch);
  execute(validate_weights_grad_batched(tables, how, ws.get()), ws.get());
}

void per_sample_weights_grad(table_view<const float> table, const bags& batch, const options& opts,
                             matrix_view<const float> grad_output, std::span<float> grad_weights) {
  std::vector<std::int64_t> own_indices;
  execute(validate_weights_grad(stored(table), batch, opts, grad_output, grad_weights, own_indices));
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
  const forward_request& req = impl_->call.req;
  const bool one_pass = req.prefetch == prefetch_level::l2 && !req.narrow_passes;
  return {one_pass ? prefetch_level::l2_one_pass : req.prefetch, req.prefetch == prefetch_level::none ? 0 : req.prefetch_rows};
}

// The validated update and its plan (plan_updates), kept with the workspace that holds its
// transpose and blocks.
struct update_roofline::impl {
  workspace scratch;
  update_call call;
  std::span<const table_rows_block> blocks;
  std::uint32_t zero = 0;  // rewrite_update_rows' xor: 0, which the kernels cannot know
};

update_roofline::update_roofline(trainable_table_view table, const bags& batch, const options& opts,
                                 matrix_view<const float> grad_output, const optimizer& opt, optimizer_state state,
                                 std::span<const std::int64_t> argmax)
    : impl_(std::make_unique<impl>()) {
  workspace::impl& ws = impl_->scratch.get();
  impl_->call = validate_backward_update(table, batch, opts, grad_output, opt, state, argmax, ws.rewritten_indices);
  update_call& call = impl_->call;
  if (call.which == isa::reference)
    throw error(errc::unsupported_isa, "update_roofline measures the memory system: it needs a SIMD ISA, not reference");
  impl_->blocks = plan_updates({&call.req, 1}, call.how, /*may_trial=*/false, ws).blocks;
}

update_roofline::update_roofline(update_roofline&&) noexcept = default;
update_roofline& update_roofline::operator=(update_roofline&&) noexcept = default;
update_roofline::~update_roofline() = default;

void update_roofline::run() const {
  const impl& c = *impl_;
  const kernel_table& k = kernels_of(c.call.which);
  run_blocks(std::ssize(c.blocks), c.call.how, [&](std::int64_t i) {
    const table_rows_block& b = c.blocks[static_cast<std::size_t>(i)];
    k.rewrite_update_rows(c.call.req, b.rows.begin, b.rows.end, c.zero);
  });
}

std::int64_t update_roofline::rows() const noexcept { return impl_->call.req.gradient.transpose.num_unique; }

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

update_summary backward_update(trainable_table_view table, const bags& batch, const options& opts,
                               matrix_view<const float> grad_output, const optimizer& opt, optimizer_state state,
                               std::span<const std::int64_t> argmax, workspace* scratch) {
  scratch_or_local ws(scratch);
  update_call call = validate_backward_update(table, batch, opts, grad_output, opt, state, argmax,
                                              ws.get().rewritten_indices);
  return execute(call, &ws.whole());
}

update_summary detail::execute(update_call& call, workspace* scratch) {
  scratch_or_local ws(scratch);
  call.census.publish();
  return run_update(call, ws.get());
}

void backward_update_batched(std::span<const table_update> tables, std::span<update_summary> summaries,
                             const execution& how, workspace* scratch) {
  scratch_or_local ws(scratch);
  const batched_update_call call = validate_backward_update_batched(tables, summaries, how, ws.get());
  for (const index_census& c : call.censuses) c.publish();
  run_updates(call.tables, call.which, call.how, summaries, ws.get());
}

update_summary detail::apply_gradient_rows(const trainable_table_view& table, std::span<const std::int64_t> rows,
                                           std::span<const float> values, std::int64_t dim, const optimizer& opt,
                                           const optimizer_state& state, const execution& how, workspace* scratch) {
  scratch_or_local ws(scratch);
  update_call call = validate_apply_sparse_gradient(table, rows, values, dim, opt, state, how);
  return run_update(call, ws.get());
}

update_summary apply_sparse_gradient(trainable_table_view table, const sparse_gradient& grad, const optimizer& opt,
                                     optimizer_state state, const execution& how, workspace* scratch) {
  return apply_gradient_rows(table, grad.rows, grad.values, grad.dim, opt, state, how, scratch);
}

}  // namespace embag
