// The ceiling forward is measured against: `embag bench`'s roofline, for anyone timing embag.
#pragma once

#include <memory>

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

}  // namespace embag
