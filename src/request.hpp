// The validated form of a call: what validation produces and plan, reference and kernels consume.
// Plain structs only: this header is included by the per-ISA kernel sources, so it must not define
// any inline function with external linkage (one compiled with AVX-512 flags could be linked into
// baseline code; reduction.hpp's have internal linkage for that reason).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "embag/embag.hpp"
#include "embag/optim.hpp"
#include "reduction.hpp"

namespace embag::detail {

// The caller's indices are validated >= 0, so this matches none of them; the index policies
// rewrite a skipped or pruned index as the padding, this value included, so it matches those.
inline constexpr std::int64_t no_padding = -1;

// The bags of a validated call, as read in place from the caller's arrays.
struct bag_source {
  const void* indices = nullptr;
  index_type index_kind = index_type::i64;
  std::int64_t nnz = 0;                // len(indices)
  const void* boundaries = nullptr;  // offsets or lengths
  index_type boundary_kind = index_type::i64;
  bag_layout layout = bag_layout::offsets;
  std::int64_t fixed_length = 0;
  std::int64_t num_boundaries = 0;  // entries of offsets / lengths
  std::int64_t num_bags = 0;        // B
  const float* weights = nullptr;   // per-sample weights, or null
  // Every bag holds exactly one index (bag b is index b), whatever the layout: one-hot features.
  // Validation finds it; the unweighted forward sums then read no boundary per bag, and the plan
  // cuts such calls like lookups.
  bool one_index_each = false;
};

// Element i of an int32 or int64 array (indices, offsets, lengths, rows), as int64.
inline std::int64_t element_at(const void* data, index_type kind, std::int64_t i) noexcept {
  return kind == index_type::i32 ? static_cast<const std::int32_t*>(data)[i] : static_cast<const std::int64_t*>(data)[i];
}

// Calls f with the indices as a typed pointer, so per-element loops do not branch on the type.
template <class F>
void with_indices(const bag_source& bags, F&& f) {
  if (bags.index_kind == index_type::i32) f(static_cast<const std::int32_t*>(bags.indices));
  else f(static_cast<const std::int64_t*>(bags.indices));
}

// The end of bag b given its start, outside the kernels (which have their own per-ISA copy of
// this rule).
inline std::int64_t end_of_bag(const bag_source& bags, std::int64_t b, std::int64_t start) noexcept {
  switch (bags.layout) {
    case bag_layout::offsets:
      return b + 1 < bags.num_boundaries ? element_at(bags.boundaries, bags.boundary_kind, b + 1) : bags.nnz;
    case bag_layout::lengths: return start + element_at(bags.boundaries, bags.boundary_kind, b);
    case bag_layout::fixed_length: return start + bags.fixed_length;
  }
  return start;
}

// A contiguous run of bags: bags [bag_begin, bag_end) whose first index is at index_begin.
// With mode none a "bag" is one index: bag_begin == index_begin.
struct bag_block {
  std::int64_t bag_begin = 0;
  std::int64_t bag_end = 0;
  std::int64_t index_begin = 0;
};

// A 16-bit float output (f16 or bf16): row r at data + r * stride elements, each the fp32 result
// rounded once to nearest even. type f32: the output is `out` itself.
struct output_narrowing {
  std::byte* data = nullptr;
  std::int64_t stride = 0;  // in elements
  dtype type = dtype::f32;
};

struct forward_request {
  // Row r of the table starts at table + r * row_stride bytes and holds row_bytes bytes in
  // element_type's layout (embag/quantize.hpp): dim floats, or their compressed encoding.
  const std::byte* table = nullptr;
  dtype element_type = dtype::f32;
  std::int64_t rows = 0, dim = 0, row_stride = 0, row_bytes = 0;
  bool rows_line_aligned = false;  // every row starts a 64-byte cache line
  bag_source bags;
  reduction reduce;
  std::int64_t padding_idx = no_padding;  // normalised to [0, rows) or no_padding
  bool clip_max_norm = false;              // scale gathered rows whose norm exceeds max_norm
  float max_norm = 0, norm_type = 2;
  // Output row `bag` (mode none: position) is at out + (bag - out_first_bag) * out_stride: the
  // call's output, or a stage of a few rows the dispatch narrows into `narrowed` afterwards.
  float* out = nullptr;
  std::int64_t out_stride = 0;
  std::int64_t out_first_bag = 0;
  output_narrowing narrowed;
  std::int64_t* argmax = nullptr;  // output_rows x dim, or null (never staged)
  int prefetch_rows = 0;
  prefetch_level prefetch = prefetch_level::none;  // resolved: never automatic here
  bool narrow_passes = false;  // rows read in passes of at most 256 bytes (prefetch into L2 only)
  int prefetch_trial = -1;  // the candidate of plan.hpp's prefetch_trials this call tries, or -1
  int prefetch_trial_set = -1;  // whose trials (plan.cpp: by table class, bag length, row and element size)
};

// A row and a position of the index stream, sorted together (the row transpose's wide entries;
// position holds the position's bag instead when that is all the kernels need: plan.cpp).
struct row_and_position {
  std::int64_t row, position;
};

// The bags transposed into table rows, built by the plan for backward: the non-padding positions
// j of indices sorted by (indices[j], j), grouped by row.
struct row_transpose {
  const std::int64_t* unique_rows = nullptr;      // num_unique rows, ascending
  const std::int64_t* segment_begin = nullptr;    // num_unique + 1: positions of unique_rows[u]
  const std::int64_t* bags = nullptr;             // the bag of each sorted position (mode none: itself)
  // Per sorted position of a pooled sum, what its dY row is multiplied by in its row's gradient:
  // its weight, divided by its bag's divisor (mean, sqrtn), then by its row's count
  // (scale_grad_by_freq); the reference's arithmetic. Null when every one is 1, and for max.
  const float* coefficients = nullptr;
  std::int64_t num_unique = 0;
};

struct backward_request {
  bag_source bags;
  std::int64_t rows = 0, dim = 0;
  reduction reduce;
  std::int64_t padding_idx = no_padding;
  bool scale_grad_by_freq = false;
  const float* grad_output = nullptr;
  std::int64_t grad_output_stride = 0;
  const std::int64_t* argmax = nullptr;  // mode max
  // Output: dense rows (grad_table + row * stride, accumulated) or sparse (values + u * dim).
  float* grad_table = nullptr;
  std::int64_t grad_table_stride = 0;
  float* sparse_values = nullptr;
  row_transpose transpose;
  prefetch_level prefetch = prefetch_level::none;  // backward_scatter's, resolved
  int prefetch_rows = 0;
};

// How an optimizer's step, a chunk of rows at a time (update_chunk_rows), brings in its table and
// state rows: not at all (a table within L2); by demand loads of the chunk's rows at its start,
// then its work; or by prefetches into L2 of the next chunk's rows while it works on this one.
// Which of the last two is faster depends on the machine (plan.hpp, choose_update_fetch).
enum class update_fetch : std::uint8_t { none, demand_loads, prefetch_next_chunk };

// An optimizer's step (embag/optim.hpp) on the rows gradient.transpose lists: each row's gradient
// computed from the transpose as backward_rows computes it (fused), or read from given_gradient.
struct update_request {
  backward_request gradient;
  // A fused pooled sum's gradient rows as a forward over dY (api.cpp), run a chunk at a time into
  // scratch rows; its table is null when the rows come from row_gradient (max) or given_gradient.
  forward_request sums_gradient;
  const float* given_gradient = nullptr;  // num_unique x dim, dense: row u's gradient at u * dim
  std::byte* table = nullptr;             // row r at table + r * table_stride elements of table_type
  dtype table_type = dtype::f32;          // f32, f16 or bf16
  std::int64_t table_stride = 0;
  float* state = nullptr;                 // adagrad: rows x dim; rowwise_adagrad: rows x 1; sgd: null
  std::int64_t state_stride = 0;          // in floats
  optimizer_kind kind = optimizer_kind::sgd;
  float learning_rate = 0, eps = 0, weight_decay = 0;
  rounding_mode rounding = rounding_mode::nearest;
  std::uint64_t seed = 0;
  // How the step brings its chunk's table and state rows in (choose_update_fetch).
  update_fetch fetch = update_fetch::none;
  // Added to the row number stochastic rounding hashes: a shard's first row in the whole table
  // (embag/sharded.hpp), so that a shard rounds as the whole table would.
  std::int64_t hashed_row_offset = 0;
};

// What a block of an update did; blocks are merged in row order.
struct update_tally {
  std::int64_t updated = 0, not_finite = 0, first_not_finite = -1;
};

// An update runs over its unique rows a chunk at a time: every gradient of the chunk first (the
// fused step's dY rows, from cache), then every row's step (table and state rows: random rows of
// DRAM for a large table, brought in as update_fetch says). Interleaving the two per row left each
// row's table reads to wait on their own, whatever the prefetch (fused SGD on R = 1M, D = 128,
// L = 40: 3.2x backward_sparse's time, 1.8x in chunks). A chunk is the plan's prefetch distance in
// rows (choose_scatter_prefetch).
inline std::int64_t update_chunk_rows(const update_request& q) noexcept { return std::max(q.gradient.prefetch_rows, 1); }

// The table and state bytes of one row an update's step reads (and writes).
inline std::int64_t update_row_bytes(const update_request& q) noexcept {
  const std::int64_t table_bytes = q.gradient.dim * (q.table_type == dtype::f32 ? 4 : 2);
  const std::int64_t state_floats = q.kind == optimizer_kind::adagrad ? q.gradient.dim : q.kind == optimizer_kind::rowwise_adagrad ? 1 : 0;
  return table_bytes + state_floats * std::int64_t{sizeof(float)};
}

// The scratch floats one block of an update needs, a cache line's multiple: a fused step's chunk
// of gradient rows, then one row each of decayed gradient, new weights and new state.
inline std::int64_t update_scratch_floats(const update_request& q) noexcept {
  const std::int64_t gradient_rows = q.given_gradient == nullptr ? update_chunk_rows(q) : 0;
  return ((gradient_rows + 3) * q.gradient.dim + 15) / 16 * 16;
}

struct weights_grad_request {
  forward_request forward;  // table, bags, mode, padding, clipping (out and argmax unused)
  const float* grad_output = nullptr;
  std::int64_t grad_output_stride = 0;
  float* grad_weights = nullptr;  // nnz
};

// The smallest and largest of n indices (0 and 0 when n is 0): validation's fast scan.
struct index_extremes {
  std::int64_t lowest = 0, highest = 0;
};

// Validation's fast scan of n offsets: whether they start at 0, never decrease and stay within nnz;
// and whether each is above the one before (no bag but perhaps the last is empty).
struct offsets_order {
  bool in_order = false, rising = false;
};

// The scale max_norm applies to a row: max_norm / (norm + 1e-7) when its norm exceeds max_norm,
// else 1. Defined once (src/plan.cpp) and used by the reference and every kernel alike, so clipped
// values agree bit for bit.
float max_norm_scale(const float* row, std::int64_t dim, float max_norm, float norm_type) noexcept;

}  // namespace embag::detail
