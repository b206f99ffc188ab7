// THE backward kernels, templated on the xsimd architecture, compiled once per ISA.
//
// backward_rows: the plan has transposed the bags into table rows (positions sorted by row, then
// by position), so each unique row's gradient is a sum over its own positions, in ascending
// position order: blocks of rows run in parallel without atomics and the result does not depend
// on the thread count. Per element it is the reference's loop, in the same order:
//   grad[row] = fma(c_j, dY[bag(j)], grad[row]),  c_j = w_j (/ bag divisor) (/ count(row) by freq)
// (c_j: the transpose's coefficients; the divisor for mean and sqrtn) and for max:
// grad[row][d] = fma(c, dY[bag][d], grad[row][d]), c = 1 (/ count), where argmax[bag][d] == row,
// once per bag. It serves the dense gradients that need the transpose and max's sparse and fused
// gradients; the sums' are a forward over dY (api.cpp, sums_gradient_as_forward).
//
// weights_grad: per index j, <dY[bag(j)], x_j> (x_j clipped as forward saw it); for a weighted
// bag divided by S (mean, sqrtn), (<dY, x_j> - slope_j * sum_i w_i <dY, x_i> / S) / S with
// slope_j = dS/dw_j (reduction.hpp). A dot product: the lane-wise summation order differs from the
// reference's, so this one agrees within rounding, not bit for bit.
#pragma once

#include <algorithm>

#include "kernels/common.hpp"

namespace embag::detail::EMBAG_ISA_NS {

// Rows ahead whose gradient destination (dense: a random row of the caller's R x D buffer) is
// prefetched into L1, and 4x as far ahead into L2; positions ahead whose dY row is prefetched into
// L1. The positions are one stream across rows: a hot row's many bags are random rows of dY, which
// a prefetch of each row's first one left to miss one by one (sparse backward on Zipf ids).
inline constexpr std::int64_t backward_prefetch_rows = 8;
inline constexpr std::int64_t backward_prefetch_positions = 16;

// Unique row u's gradient into grad: accumulated onto it, or (Fresh: a sparse row, an update's
// scratch row) written from nothing. dY rows are prefetched backward_prefetch_positions positions
// ahead, up to positions_end (the block's end).
template <class Arch, bool Fresh>
inline void row_gradient(const backward_request& r, std::int64_t u, float* grad, std::int64_t positions_end) {
  const row_transpose& t = r.transpose;
  const std::int64_t dim = r.dim;
  const std::int64_t row_bytes = dim * static_cast<std::int64_t>(sizeof(float));
  const std::int64_t row = t.unique_rows[u];
  if (Fresh && r.reduce.pool == pooling::max)
    for (std::int64_t d = 0; d < dim; ++d) grad[d] = 0.0f;
  const std::int64_t first = t.segment_begin[u], last = t.segment_begin[u + 1];
  const std::int64_t count = last - first;
  std::int64_t previous_bag = -1;
  for (std::int64_t k = first; k < last; ++k) {
    if (k + backward_prefetch_positions < positions_end)
      prefetch_row<3>(r.grad_output + t.bags[k + backward_prefetch_positions] * r.grad_output_stride, row_bytes);
    const std::int64_t bag = t.bags[k];
    const float* dy = r.grad_output + bag * r.grad_output_stride;
    if (r.reduce.pool == pooling::max) {
      // a row repeated within a bag won each of its dimensions once
      if (bag == previous_bag) continue;
      previous_bag = bag;
      const std::int64_t* winner = r.argmax + bag * dim;
      const float c = r.scale_grad_by_freq ? 1.0f / static_cast<float>(count) : 1.0f;
      for (std::int64_t d = 0; d < dim; ++d)
        if (winner[d] == row) grad[d] = std::fma(c, dy[d], grad[d]);
      continue;
    }
    const float c = t.coefficients != nullptr ? t.coefficients[k] : 1.0f;
    if (Fresh && k == first) add_scaled<Arch, true>(grad, dy, c, dim);  // the row's first write
    else add_scaled<Arch>(grad, dy, c, dim);
  }
}

// The dY rows of a block's first positions, before row_gradient's own prefetches take over.
inline void prefetch_first_positions(const backward_request& r, std::int64_t unique_begin, std::int64_t positions_end) {
  const row_transpose& t = r.transpose;
  const std::int64_t row_bytes = r.dim * static_cast<std::int64_t>(sizeof(float));
  for (std::int64_t k = t.segment_begin[unique_begin];
       k < std::min(t.segment_begin[unique_begin] + backward_prefetch_positions, positions_end); ++k)
    prefetch_row<3>(r.grad_output + t.bags[k] * r.grad_output_stride, row_bytes);
}

template <class Arch>
void backward_rows(const backward_request& r, std::int64_t unique_begin, std::int64_t unique_end) {
  const row_transpose& t = r.transpose;
  const std::int64_t dim = r.dim;
  const std::int64_t row_bytes = dim * static_cast<std::int64_t>(sizeof(float));
  const std::int64_t positions_end = t.segment_begin[unique_end];
  prefetch_first_positions(r, unique_begin, positions_end);
  for (std::int64_t u = unique_begin; u < unique_end; ++u) {
    if (r.sparse_values) {
      row_gradient<Arch, true>(r, u, r.sparse_values + u * dim, positions_end);
      continue;
    }
    if (const std::int64_t far = u + 4 * backward_prefetch_rows; far < unique_end)
      prefetch_row<1>(r.grad_table + t.unique_rows[far] * r.grad_table_stride, row_bytes);
    if (const std::int64_t ahead = u + backward_prefetch_rows; ahead < unique_end)
      prefetch_row<3, 1>(r.grad_table + t.unique_rows[ahead] * r.grad_table_stride, row_bytes);
    row_gradient<Arch, false>(r, u, r.grad_table + t.unique_rows[u] * r.grad_table_stride, positions_end);
  }
}

// Dense backward of the pooled sums (sum, mean, sqrtn) without scale_grad_by_freq, straight from the bags: each
// non-padding position j adds c_j x dY[bag(j)] to grad[indices[j]] in position order, which is
// backward_rows' order within each row (positions ascending), so the two agree bit for bit without
// the transpose and its sort. The block owns rows [row_begin, row_end): blocks split the table's
// rows and each reads the whole index stream, so no row is written by two threads. The rows to
// write are prefetched for writing prefetch_rows positions ahead, at a level fixed per
// instantiation and unrolled per cache line for the specialised widths (Dim; 0: any).
template <class Arch, class Index, prefetch_level Prefetch, std::int64_t Dim>
void backward_scatter_typed(const backward_request& r, std::int64_t row_begin, std::int64_t row_end) {
  const Index* indices = static_cast<const Index*>(r.bags.indices);
  const std::int64_t dim = Dim != 0 ? Dim : r.dim;
  [[maybe_unused]] const std::int64_t row_bytes = dim * static_cast<std::int64_t>(sizeof(float));  // Dim 0's prefetch
  // gradient rows start a cache line when the buffer and its stride do
  const bool line_aligned = reinterpret_cast<std::uintptr_t>(r.grad_table) % 64 == 0 && r.grad_table_stride % 16 == 0;
  const std::int64_t ahead = r.prefetch_rows;
  const std::int64_t prefetch_end = Prefetch == prefetch_level::none ? 0 : r.bags.nnz - ahead;
  const bag_scaling scaling = r.reduce.scaling;
  const auto owned = [&](std::int64_t row) { return row >= row_begin && row < row_end; };
  for_each_bag(r.bags, {0, r.bags.num_bags, 0}, [&](std::int64_t bag, std::int64_t begin, std::int64_t end) {
    float divisor = 0.0f;  // forward's, from the bag's non-padding positions in order
    if (scaling != bag_scaling::none) {
      bag_tally tally;
      for (std::int64_t j = begin; j < end; ++j)
        if (indices[j] != r.padding_idx) tally_row(tally, r.bags.weights ? r.bags.weights[j] : 1.0f);
      divisor = bag_divisor(scaling, r.bags.weights != nullptr, tally);
    }
    const float* dy = r.grad_output + bag * r.grad_output_stride;
    for (std::int64_t j = begin; j < end; ++j) {
      if constexpr (Prefetch != prefetch_level::none)
        if (j < prefetch_end)
          if (const std::int64_t next = indices[j + ahead]; owned(next)) {
            constexpr int locality = Prefetch == prefetch_level::l1 ? 3 : 1;
            const float* row = r.grad_table + next * r.grad_table_stride;
            if constexpr (Dim == 0) prefetch_row<locality, 1>(row, row_bytes);
            else prefetch_fixed_row<locality, Dim * 4, 1>(row, line_aligned);
          }
      const std::int64_t row = indices[j];
      if (!owned(row) || row == r.padding_idx) continue;
      float c = r.bags.weights ? r.bags.weights[j] : 1.0f;
      if (scaling != bag_scaling::none) c = divided(c, divisor);  // the transpose's coefficients' arithmetic
      add_scaled<Arch>(r.grad_table + row * r.grad_table_stride, dy, c, dim);
    }
  });
}

template <class Arch>
void backward_scatter(const backward_request& r, std::int64_t row_begin, std::int64_t row_end) {
  const auto at_level = [&]<class Index>() {
    const auto at_dim = [&]<prefetch_level Prefetch>() {
      switch (r.dim) {
        case 16: return backward_scatter_typed<Arch, Index, Prefetch, 16>(r, row_begin, row_end);
        case 32: return backward_scatter_typed<Arch, Index, Prefetch, 32>(r, row_begin, row_end);
        case 64: return backward_scatter_typed<Arch, Index, Prefetch, 64>(r, row_begin, row_end);
        case 128: return backward_scatter_typed<Arch, Index, Prefetch, 128>(r, row_begin, row_end);
        case 256: return backward_scatter_typed<Arch, Index, Prefetch, 256>(r, row_begin, row_end);
        default: return backward_scatter_typed<Arch, Index, Prefetch, 0>(r, row_begin, row_end);
      }
    };
    switch (r.prefetch) {
      case prefetch_level::l1: return at_dim.template operator()<prefetch_level::l1>();
      case prefetch_level::l2: return at_dim.template operator()<prefetch_level::l2>();
      default: return at_dim.template operator()<prefetch_level::none>();
    }
  };
  if (r.bags.index_kind == index_type::i32) at_level.template operator()<std::int32_t>();
  else at_level.template operator()<std::int64_t>();
}

template <class Arch, class Index>
void weights_grad_typed(const weights_grad_request& w, const bag_block& block) {
  const forward_request& r = w.forward;
  const Index* indices = static_cast<const Index*>(r.bags.indices);
  const std::int64_t dim = r.dim;
  for_each_bag(r.bags, block, [&](std::int64_t bag, std::int64_t begin, std::int64_t end) {
    const float* dy = w.grad_output + bag * w.grad_output_stride;
    float weighted_sum = 0.0f;
    bag_tally tally;
    for (std::int64_t p = begin; p < end; ++p) {
      const std::int64_t index = indices[p];
      if (index == r.padding_idx) {
        w.grad_weights[p] = 0.0f;
        continue;
      }
      const auto* x = reinterpret_cast<const float*>(r.table + index * r.row_stride);  // weights_grad: f32 only
      float g = dot<Arch>(dy, x, dim);
      if (r.clip_max_norm) g *= max_norm_scale(x, dim, r.max_norm, r.norm_type);
      w.grad_weights[p] = g;
      weighted_sum += r.bags.weights[p] * g;
      tally_row(tally, r.bags.weights[p]);
    }
    const bag_scaling scaling = r.reduce.scaling;
    if (scaling == bag_scaling::none) return;
    const float divisor = bag_divisor(scaling, true, tally);
    for (std::int64_t p = begin; p < end; ++p) {
      if (indices[p] == r.padding_idx) continue;
      w.grad_weights[p] = scaled_weight_gradient(scaling, w.grad_weights[p], r.bags.weights[p], weighted_sum, divisor);
    }
  });
}

template <class Arch>
void weights_grad(const weights_grad_request& w, const bag_block& block) {
  if (w.forward.bags.index_kind == index_type::i32) weights_grad_typed<Arch, std::int32_t>(w, block);
  else weights_grad_typed<Arch, std::int64_t>(w, block);
}

}  // namespace embag::detail::EMBAG_ISA_NS
