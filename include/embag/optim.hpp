// embag: fused sparse optimizers. A training step on an embedding table is backward to a sparse
// gradient, then an optimizer that reads it and updates the rows it names and their state: two
// passes over the touched rows, and a gradient array written and read in between. backward_update
// does both in one pass: each row the batch touches gets its gradient (backward_sparse's
// arithmetic: every mode, weights, padding, scale_grad_by_freq, max through argmax) in a scratch
// row, and the optimizer's update at once, by one thread, in the order backward sums. The results
// are bitwise the same whatever the thread count, and bitwise the unfused form's:
// backward_sparse, then apply_sparse_gradient on its rows.
//
// The updates, per element of a touched row with gradient g and weight w (g += weight_decay * w
// first, when weight_decay is not 0):
//   sgd              w -= lr * g                                  (torch.optim.SGD, no momentum)
//   adagrad          s += g * g;  w -= lr * (g / (sqrt(s) + eps))  (torch.optim.Adagrad, lr_decay 0)
//   rowwise_adagrad  s_row += mean(g * g) over the row;  w -= (lr / (sqrt(s_row) + eps)) * g
//                    (FBGEMM's rowwise sparse Adagrad; its mean sums the squares in 16 interleaved
//                    partial sums, lane d % 16, added pairwise 8 + 8, 4 + 4, 2 + 2, 1 + 1, an
//                    order every instruction set computes exactly)
// Where they differ from PyTorch: torch refuses weight decay with sparse gradients (Adagrad) or
// applies it to every row (a dense SGD step); here it applies to the touched rows only, as
// FBGEMM's does. Adagrad's initial_accumulator_value is the state's starting value: fill the state
// with it. lr_decay is not provided (a schedule is the caller's: pass each step's learning rate).
//
// Rows that would not stay finite are not written: when any updated weight or state value of a
// row is NaN or Inf (a NaN or Inf in dY, a gradient or accumulator that overflows), or beyond the
// largest finite value of a 16-bit table's type, neither the row nor its state changes, and the
// summary counts it. Every other row is updated.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>
#include <string_view>

#include "embag/embag.hpp"

namespace embag {

enum class optimizer_kind : std::uint8_t { sgd, adagrad, rowwise_adagrad };
inline constexpr optimizer_kind all_optimizers[] = {optimizer_kind::sgd, optimizer_kind::adagrad,
                                                    optimizer_kind::rowwise_adagrad};
std::string_view to_string(optimizer_kind which) noexcept;  // "sgd", "adagrad", "rowwise_adagrad"
std::optional<optimizer_kind> optimizer_from_string(std::string_view name) noexcept;

// How an updated weight of an f16 or bf16 table is stored (f32 tables store it as it is).
enum class rounding_mode : std::uint8_t {
  nearest,     // to nearest, ties to even
  stochastic,  // up with probability (w - down) / (up - down): small updates survive on average
};

struct optimizer {
  optimizer_kind kind = optimizer_kind::sgd;
  float learning_rate = 0.01f;  // finite, >= 0
  float eps = 1e-10f;           // adagrad and rowwise_adagrad: finite, >= 0 (torch's default)
  float weight_decay = 0.0f;    // finite, >= 0
  rounding_mode rounding = rounding_mode::nearest;
  // Stochastic rounding's random bits are a hash of (seed, row, column): reproducible, and the
  // same whatever the thread count. Give each step its own seed (the step number, say), or the
  // same elements round the same way step after step.
  std::uint64_t seed = 0;
};

// A table an optimizer writes: rows of f32, f16 or bf16 (embag/quantize.hpp's layouts).
// row_stride in elements; 0 means dim.
struct trainable_table_view {
  void* data = nullptr;
  std::int64_t rows = 0, dim = 0, row_stride = 0;
  dtype type = dtype::f32;

  trainable_table_view() = default;
  trainable_table_view(table_view<float> t) noexcept : data(t.data), rows(t.rows), dim(t.dim), row_stride(t.row_stride) {}
  trainable_table_view(void* d, std::int64_t r, std::int64_t c, std::int64_t stride, dtype t) noexcept
      : data(d), rows(r), dim(c), row_stride(stride), type(t) {}
};

// The optimizer's state, fp32 whatever the table's type, updated with the rows: adagrad's is
// rows x dim (torch's state_sum), rowwise_adagrad's rows x 1; sgd has none (an empty view). A
// memory-mapped file's rows serve as well as memory's.
using optimizer_state = matrix_view<float>;

struct update_summary {
  std::int64_t rows_updated = 0;
  std::int64_t rows_not_finite = 0;       // rows left as they were (see above)
  std::int64_t first_not_finite_row = -1;  // the lowest of them, -1 when none
};

// Backward and the optimizer's step on every row the batch touches (the rows backward_sparse
// returns). Everything is checked before the first write, as every call is: the table's and
// the state's shapes and types, the optimizer's parameters, the bags against the table's rows;
// table and state may overlap no input nor each other.
update_summary backward_update(trainable_table_view table, const bags& batch, const options& opts,
                               matrix_view<const float> grad_output, const optimizer& opt,
                               optimizer_state state = {}, std::span<const std::int64_t> argmax = {},
                               workspace* scratch = nullptr);

// The optimizer's step from a gradient already in sparse form (backward_sparse's, or one summed
// across processes): grad.rows must be ascending, unique and inside the table.
update_summary apply_sparse_gradient(trainable_table_view table, const sparse_gradient& grad, const optimizer& opt,
                                     optimizer_state state = {}, const execution& how = {},
                                     workspace* scratch = nullptr);

// One table of a batched step (many tables, one call: a recommender's tables each train on their
// own bags). opts.execution left at its defaults: the call's own execution runs every table.
struct table_update {
  trainable_table_view table;
  bags batch;
  options opts;
  matrix_view<const float> grad_output;  // output_rows x the table's dim
  optimizer opt;
  optimizer_state state;
  std::span<const std::int64_t> argmax;  // mode max: what forward produced
};

// Every table's backward_update, each bitwise its own single call's; summaries[t] receives table
// t's. Every table is checked first (an error names it: "tables[3]: ..."), then across tables: no
// table or state written may overlap another table's, nor any table's inputs, nor the summaries.
// The tables run one after another, each on every thread the execution allows.
void backward_update_batched(std::span<const table_update> tables, std::span<update_summary> summaries,
                             const execution& how = {}, workspace* scratch = nullptr);

}  // namespace embag
