// backward_sparse into fixed buffers the caller owns, for the C ABI: embag.hpp's form grows
// vectors of its own, which a C caller would then have to have copied into its buffers.
#pragma once

#include <cstdint>
#include <span>

#include "embag/embag.hpp"

namespace embag::detail {

struct sparse_gradient_buffers {
  std::span<std::int64_t> rows;  // its size is the capacity, in rows
  float* values = nullptr;       // capacity x dim (grad_output's cols) floats, dense
};

// backward_sparse's gradient into `out`. Every argument is checked first, the buffers as any
// output (aligned, disjoint from every input, from each other and from num_rows); then num_rows
// receives the gradient's row count, and the rows are written only if they fit in the capacity
// (errc::size_mismatch otherwise, the buffers untouched).
void backward_sparse_into(std::int64_t table_rows, const bags& batch, const options& opts,
                          matrix_view<const float> grad_output, std::span<const std::int64_t> argmax,
                          const sparse_gradient_buffers& out, std::int64_t& num_rows);

}  // namespace embag::detail
