// THE optimizer kernel (embag/optim.hpp), templated on the xsimd architecture, compiled once per
// ISA. Per unique row of an update: its gradient (fused: from the transpose, as backward_sparse
// computes it; or the given sparse row), weight decay, then the optimizer's new weights and state
// into scratch rows; then, when every new value is finite and within the table type's range, the
// stores. Per element it is the reference's formula with the same operations in the same order
// (no contraction: meson.build), so the two agree bit for bit; rowwise Adagrad's sum of squares
// has one order every ISA computes (sum_of_squares).
#pragma once

#include <cfloat>
#include <cmath>

#include "kernels/backward.hpp"
#include "kernels/forward.hpp"
#include "kernels/narrow.hpp"
#include "kernels/rows.hpp"

namespace embag::detail {
std::uint16_t stochastic_round(float x, dtype to, std::uint32_t random24) noexcept;  // src/formats/halves.cpp
std::uint32_t rounding_bits(std::uint64_t seed, std::int64_t row, std::int64_t column) noexcept;
}  // namespace embag::detail

namespace embag::detail::EMBAG_ISA_NS {

// The largest magnitude a row of this type stores as a finite value.
template <dtype Type>
inline constexpr float largest_stored = Type == dtype::f16 ? 65504.0f : Type == dtype::bf16 ? 0x1.fep127f : FLT_MAX;

// sum of g[d]^2 in 16 interleaved partial sums (lane d % 16, each in ascending d), added pairwise
// 8 + 8, 4 + 4, 2 + 2, 1 + 1: the reference's order, which any batch width dividing 16 computes
// exactly.
template <class Arch>
inline float sum_of_squares(const float* g, std::int64_t n) noexcept {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::int64_t lanes = batch::size;
  static_assert(16 % lanes == 0, "sum_of_squares: a batch width that does not divide 16");
  constexpr std::int64_t parts = 16 / lanes;
  batch acc[parts];
  for (std::int64_t p = 0; p < parts; ++p) acc[p] = batch(0.0f);
  std::int64_t d = 0;
  for (; d + 16 <= n; d += 16)
    for (std::int64_t p = 0; p < parts; ++p) {
      const batch x = batch::load_unaligned(g + d + p * lanes);
      acc[p] = acc[p] + x * x;
    }
  alignas(64) float lane[16];
  for (std::int64_t p = 0; p < parts; ++p) acc[p].store_aligned(lane + p * lanes);
  for (; d < n; ++d) lane[d % 16] += g[d] * g[d];
  for (int width = 8; width >= 1; width /= 2)
    for (int i = 0; i < width; ++i) lane[i] += lane[i + width];
  return lane[0];
}

// One row's step: g (dim floats) the row's gradient; scratch holds three rows of dim floats.
// Returns whether the row was written.
template <class Arch, dtype Type, optimizer_kind Kind>
inline bool update_row(const update_request& q, std::int64_t row, const float* g, float* scratch) noexcept {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::int64_t lanes = batch::size;
  constexpr std::int64_t element_bytes = Type == dtype::f32 ? 4 : 2;
  const std::int64_t dim = q.gradient.dim;
  std::byte* const stored = q.table + row * q.table_stride * element_bytes;
  const row_reader<Arch, Type> w(stored, dim);
  float* const decayed = scratch;
  float* const new_w = scratch + dim;
  float* const new_s = scratch + 2 * dim;
  float* const s = q.state == nullptr ? nullptr : q.state + row * q.state_stride;
  const float lr = q.learning_rate, eps = q.eps, decay = q.weight_decay;

  std::int64_t d = 0;
  if (decay != 0.0f) {  // g + decay * w
    for (; d + lanes <= dim; d += lanes)
      (batch::load_unaligned(g + d) + batch(decay) * w.load(d)).store_unaligned(decayed + d);
    for (; d < dim; ++d) decayed[d] = g[d] + decay * w.at(d);
    g = decayed;
  }
  float row_state = 0.0f, row_step = 0.0f;
  bool finite = true;
  if constexpr (Kind == optimizer_kind::rowwise_adagrad) {
    row_state = s[0] + sum_of_squares<Arch>(g, dim) / static_cast<float>(dim);
    row_step = lr / (std::sqrt(row_state) + eps);
    finite = std::fabs(row_state) <= FLT_MAX;
  }
  constexpr float limit = largest_stored<Type>;
  auto within = batch(0.0f) == batch(0.0f);  // all true
  for (d = 0; d + lanes <= dim; d += lanes) {
    const batch x = w.load(d), grad = batch::load_unaligned(g + d);
    batch next;
    if constexpr (Kind == optimizer_kind::sgd) {
      next = x - batch(lr) * grad;
    } else if constexpr (Kind == optimizer_kind::adagrad) {
      const batch sum = batch::load_unaligned(s + d) + grad * grad;
      sum.store_unaligned(new_s + d);
      within = within & (xsimd::abs(sum) <= batch(FLT_MAX));
      next = x - batch(lr) * divide<Arch>(grad, square_root<Arch>(sum) + batch(eps));
    } else {
      next = x - batch(row_step) * grad;
    }
    within = within & (xsimd::abs(next) <= batch(limit));
    next.store_unaligned(new_w + d);
  }
  for (; d < dim; ++d) {
    const float x = w.at(d), grad = g[d];
    float next;
    if constexpr (Kind == optimizer_kind::sgd) {
      next = x - lr * grad;
    } else if constexpr (Kind == optimizer_kind::adagrad) {
      const float sum = s[d] + grad * grad;
      new_s[d] = sum;
      finite = finite && std::fabs(sum) <= FLT_MAX;
      next = x - lr * (grad / (std::sqrt(sum) + eps));
    } else {
      next = x - row_step * grad;
    }
    finite = finite && std::fabs(next) <= limit;
    new_w[d] = next;
  }
  if (!finite || !xsimd::all(within)) return false;

  if constexpr (Kind == optimizer_kind::adagrad) copy_floats<Arch>(s, new_s, dim);
  if constexpr (Kind == optimizer_kind::rowwise_adagrad) s[0] = row_state;
  auto* const halves = reinterpret_cast<std::uint16_t*>(stored);
  if constexpr (Type == dtype::f32) {
    copy_floats<Arch>(reinterpret_cast<float*>(stored), new_w, dim);
  } else if (q.rounding == rounding_mode::stochastic) {
    for (d = 0; d < dim; ++d) halves[d] = stochastic_round(new_w[d], Type, rounding_bits(q.seed, row + q.hashed_row_offset, d));
  } else if constexpr (Type == dtype::f16) {
    narrow_to_f16<Arch>(new_w, dim, halves);
  } else {
    narrow_to_bf16<Arch>(new_w, dim, halves);
  }
  return true;
}

// An update's unique rows [unique_begin, unique_end) a chunk at a time (update_chunk_rows): each
// chunk's table and state rows brought in as q.fetch says (a large table's are random rows of
// DRAM), by demand loads (load_row_lines) before its work or by prefetches into L2 a chunk ahead,
// then work(first, last) on the chunk. The fused step and the update's roofline (roofline.hpp)
// both walk their rows this way. Stateful: the optimizer keeps state rows (q.state is not null),
// a template argument so that the per-row loop does not test it.
template <bool Stateful, class Work>
[[gnu::always_inline]] inline void for_each_update_chunk(const update_request& q, std::int64_t unique_begin,
                                                         std::int64_t unique_end, const Work& work) noexcept {
  const std::int64_t* const unique_rows = q.gradient.transpose.unique_rows;
  const std::int64_t chunk = update_chunk_rows(q);
  const std::int64_t element_bytes = q.table_type == dtype::f32 ? 4 : 2;
  const std::int64_t row_bytes = q.gradient.dim * element_bytes;
  const std::int64_t state_bytes = (q.kind == optimizer_kind::adagrad ? q.gradient.dim : 1) * std::int64_t{sizeof(float)};
  const auto bring_rows = [&]<bool Prefetch>(std::int64_t begin, std::int64_t end) EMBAG_ALWAYS_INLINE {
    const auto bring = [](const void* row, std::int64_t bytes) EMBAG_ALWAYS_INLINE {
      if constexpr (Prefetch) prefetch_row<1>(row, bytes);
      else load_row_lines(row, bytes);
    };
    for (std::int64_t u = begin; u < end; ++u) {
      const std::int64_t row = unique_rows[u];
      bring(q.table + row * q.table_stride * element_bytes, row_bytes);
      if constexpr (Stateful) bring(q.state + row * q.state_stride, state_bytes);
    }
  };
  if (q.fetch == update_fetch::prefetch_next_chunk)
    bring_rows.template operator()<true>(unique_begin, std::min(unique_begin + chunk, unique_end));
  for (std::int64_t first = unique_begin; first < unique_end; first += chunk) {
    const std::int64_t last = std::min(first + chunk, unique_end);
    if (q.fetch == update_fetch::demand_loads) bring_rows.template operator()<false>(first, last);
    else if (q.fetch == update_fetch::prefetch_next_chunk)
      bring_rows.template operator()<true>(last, std::min(last + chunk, unique_end));
    work(first, last);
  }
}

// The step on unique rows [unique_begin, unique_end) a chunk at a time (for_each_update_chunk): the
// chunk's gradients into scratch (fused), then its rows' steps in order.
template <class Arch, dtype Type, optimizer_kind Kind>
void update_rows_typed(const update_request& q, std::int64_t unique_begin, std::int64_t unique_end, float* scratch,
                       update_tally& tally) {
  const backward_request& r = q.gradient;
  const row_transpose& t = r.transpose;
  const std::int64_t dim = r.dim;
  const bool fused = q.given_gradient == nullptr;
  const std::int64_t chunk = update_chunk_rows(q);
  float* const step_scratch = scratch + (fused ? chunk * dim : 0);  // update_row's rows
  const std::int64_t positions_end = fused ? t.segment_begin[unique_end] : 0;
  if (fused && q.sums_gradient.table == nullptr) prefetch_first_positions(r, unique_begin, positions_end);
  constexpr bool stateful = Kind != optimizer_kind::sgd;
  for_each_update_chunk<stateful>(q, unique_begin, unique_end, [&](std::int64_t first, std::int64_t last) EMBAG_ALWAYS_INLINE {
    if (fused && q.sums_gradient.table != nullptr) {
      forward_request chunk_gradients = q.sums_gradient;
      chunk_gradients.out = scratch;
      chunk_gradients.out_first_bag = first;
      forward_block<Arch>(chunk_gradients, {first, last, t.segment_begin[first]});
    } else if (fused) {
      for (std::int64_t u = first; u < last; ++u) row_gradient<Arch, true>(r, u, scratch + (u - first) * dim, positions_end);
    }
    for (std::int64_t u = first; u < last; ++u) {
      const float* g = fused ? scratch + (u - first) * dim : q.given_gradient + u * dim;
      const std::int64_t row = t.unique_rows[u];
      if (update_row<Arch, Type, Kind>(q, row, g, step_scratch)) {
        ++tally.updated;
      } else {
        if (tally.not_finite++ == 0) tally.first_not_finite = row;
      }
    }
  });
}

template <class Arch>
void update_rows(const update_request& q, std::int64_t unique_begin, std::int64_t unique_end, float* scratch,
                 update_tally& tally) {
  const auto of_kind = [&]<dtype Type>() {
    switch (q.kind) {
      case optimizer_kind::sgd:
        return update_rows_typed<Arch, Type, optimizer_kind::sgd>(q, unique_begin, unique_end, scratch, tally);
      case optimizer_kind::adagrad:
        return update_rows_typed<Arch, Type, optimizer_kind::adagrad>(q, unique_begin, unique_end, scratch, tally);
      case optimizer_kind::rowwise_adagrad:
        return update_rows_typed<Arch, Type, optimizer_kind::rowwise_adagrad>(q, unique_begin, unique_end, scratch, tally);
    }
  };
  switch (q.table_type) {
    case dtype::f16: return of_kind.template operator()<dtype::f16>();
    case dtype::bf16: return of_kind.template operator()<dtype::bf16>();
    default: return of_kind.template operator()<dtype::f32>();
  }
}

}  // namespace embag::detail::EMBAG_ISA_NS
