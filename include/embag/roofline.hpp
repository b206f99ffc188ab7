// The ceilings forward and the fused update are measured against: `embag bench`'s rooflines, for
// anyone timing embag.
#pragma once

#include <memory>

#include "embag/optim.hpp"
#include "embag/quantize.hpp"

namespace embag {

// The minimal gather. Built once per call (validating the table, the bags and out as forward
// does), run() then sums each bag's rows into its output row and does nothing else: D a
// compile-time constant for D in {16, 32, 64, 128, 256} (other widths accumulate in the output
// row), no check, padding, weight, clip or count per row, the prefetch of `how` at a level fixed
// per loop (automatic resolves as forward's does, to what its trials have decided or else their
// first candidate, and puts nothing on trial; prefetch() says to what; l2 reads rows in passes
// of at most 256 bytes and l2_one_pass whole, as forward does). A compressed table's
// rows are decoded as forward decodes them. run()'s output equals forward's unweighted sum, bit for
// bit.
//
// Needs a SIMD ISA (errc::unsupported_isa on the reference) and bags given by offsets of the
// indices' own type (errc::invalid_option otherwise), with no per-sample weights. The table,
// indices, offsets and out must stay as they were at construction while it is run.
class gather_roofline {
 public:
  gather_roofline(table_view<const float> table, const bags& batch, matrix_view<float> out,
                  const execution& how = {});
  gather_roofline(compressed_table_view table, const bags& batch, matrix_view<float> out,
                  const execution& how = {});
  gather_roofline(gather_roofline&&) noexcept;
  gather_roofline& operator=(gather_roofline&&) noexcept;
  ~gather_roofline();

  void run() const;
  prefetch_setting prefetch() const noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// The minimal update. Built from backward_update's arguments (validated as backward_update
// validates them, the bags transposed once into the rows a step would update), run() reads each
// of those rows from the table, and from the state for Adagrad (a row of dim floats) and rowwise
// Adagrad (one float), and writes it back unchanged, and does nothing else: no dY, gradient, sort,
// arithmetic, check or tally. It walks the rows as backward_update's step does: in the same order,
// blocks and threads (`how` as opts.execution), chunks and fetch (automatic resolving to what the
// update's trials have decided, or else their first candidate, and putting nothing on trial). Any
// fused step moves at least these bytes; one that took less time would show that this is no ceiling.
//
// Needs a SIMD ISA (errc::unsupported_isa on the reference). The table, state, indices and
// offsets must stay as they were at construction while it is run; run() may race with nothing that
// reads or writes them.
class update_roofline {
 public:
  update_roofline(trainable_table_view table, const bags& batch, const options& opts, matrix_view<const float> grad_output,
                  const optimizer& opt, optimizer_state state = {}, std::span<const std::int64_t> argmax = {});
  update_roofline(update_roofline&&) noexcept;
  update_roofline& operator=(update_roofline&&) noexcept;
  ~update_roofline();

  void run() const;
  std::int64_t rows() const noexcept;  // the rows run() rewrites (a step's num_unique)

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace embag
