// What each ISA's kernel source (made from src/kernels/isa.cpp.in) hands dispatch: one function
// pointer per kernel. A plain struct, like request.hpp: included by per-ISA code and baseline code alike.
#pragma once

#include <cstdint>

#include "request.hpp"

namespace embag::detail {

struct kernel_table {
  void (*forward)(const forward_request&, const bag_block&);
  // A 16-bit output's rows [first_row, first_row + rows) from rows x dim fp32 results at stage.
  void (*narrow_rows)(const float* stage, std::int64_t rows, std::int64_t dim, const output_narrowing& to,
                      std::int64_t first_row);
  void (*backward_rows)(const backward_request&, std::int64_t unique_begin, std::int64_t unique_end);
  // Dense pooled sums (sum, mean, sqrtn) without scale_grad_by_freq, from the bags (no transpose): the rows in
  // [row_begin, row_end) only.
  void (*backward_scatter)(const backward_request&, std::int64_t row_begin, std::int64_t row_end);
  void (*weights_grad)(const weights_grad_request&, const bag_block&);
  // An optimizer's step on unique rows [unique_begin, unique_end), with update_scratch_floats(q)
  // floats of scratch; what it did added to tally.
  void (*update_rows)(const update_request&, std::int64_t unique_begin, std::int64_t unique_end, float* scratch,
                      update_tally& tally);
  // The roofline: the minimal unweighted sum of bags [block.bag_begin, block.bag_end), given by
  // offsets of the indices' type, prefetching at the request's resolved level.
  void (*gather_bags)(const forward_request&, const bag_block&);
  // The update's roofline: unique rows [unique_begin, unique_end)'s table and state rows, read and
  // written back unchanged (xor zero, a 0 the kernel cannot know), walked as update_rows walks them.
  void (*rewrite_update_rows)(const update_request&, std::int64_t unique_begin, std::int64_t unique_end, std::uint32_t zero);
  index_extremes (*scan_indices)(const void* indices, index_type kind, std::int64_t n);
  offsets_order (*scan_offsets)(const void* offsets, index_type kind, std::int64_t n, std::int64_t nnz);
};

}  // namespace embag::detail
