// Reductions: what each mode does with the rows of a bag. Validation, planning, the reference and
// the forward and backward kernels read a call's mode through its `reduction` (how rows combine,
// what the combination is divided by) instead of testing modes one by one. A new reduction is a
// row of reduction_of, and, if it divides differently, a case of bag_divisor and of
// scaled_weight_gradient below.
//
// The functions here do float arithmetic and are included by the per-ISA kernel sources as well
// as by baseline code: they have internal linkage, so each translation unit keeps its own copy,
// compiled with its own instruction-set flags (a shared inline copy could be the AVX-512 one).
#pragma once

#include <cmath>
#include <cstdint>

#include "embag/embag.hpp"

namespace embag::detail {

// How a bag's rows combine.
enum class pooling : std::uint8_t {
  sum,     // acc += w_j * x_j (or acc += x_j unweighted) over the non-padding rows, in order
  max,     // element-wise maximum; the first NaN wins
  lookup,  // no pooling: one output row per index
};

// What a pooled sum is divided by, from the bag's non-padding rows; a divisor of 0 (an empty bag,
// weights that sum to 0) gives 0.
enum class bag_scaling : std::uint8_t {
  none,
  mean,   // the count of rows, or the sum of their weights
  sqrtn,  // the square root of the count, or of the sum of the weights' squares (TensorFlow's combiner)
};

struct reduction {
  pooling pool = pooling::sum;
  bag_scaling scaling = bag_scaling::none;
};

// What a bag's divisor is computed from: its non-padding rows, their weights' sum and their
// squares' sum, each accumulated in position order (the weights' only when weighted).
struct bag_tally {
  std::int64_t count = 0;
  float weight_sum = 0.0f;
  float weight_square_sum = 0.0f;
};

namespace {

constexpr reduction reduction_of(embag::mode m) noexcept {
  switch (m) {
    case mode::sum: return {pooling::sum, bag_scaling::none};
    case mode::mean: return {pooling::sum, bag_scaling::mean};
    case mode::sqrtn: return {pooling::sum, bag_scaling::sqrtn};
    case mode::max: return {pooling::max, bag_scaling::none};
    case mode::none: return {pooling::lookup, bag_scaling::none};
  }
  return {};
}

// Per-sample weights weigh the rows of a pooled sum only.
constexpr bool takes_weights(reduction r) noexcept { return r.pool == pooling::sum; }

inline void tally_row(bag_tally& t, float weight) noexcept {
  ++t.count;
  t.weight_sum += weight;
  t.weight_square_sum += weight * weight;
}

inline float bag_divisor(bag_scaling s, bool weighted, const bag_tally& t) noexcept {
  const float count = static_cast<float>(t.count);
  if (s == bag_scaling::sqrtn) return std::sqrt(weighted ? t.weight_square_sum : count);
  return weighted ? t.weight_sum : count;
}

// x / divisor, or 0 when the divisor is 0.
inline float divided(float x, float divisor) noexcept { return divisor == 0.0f ? 0.0f : x / divisor; }

// The weights' gradient of position j of a scaled bag, from g = <dY, x_j> and weighted_sum =
// sum_i w_i <dY, x_i>: (g - slope_j * weighted_sum / divisor) / divisor, slope_j = d divisor / d w_j
// (1 for mean, w_j / divisor for sqrtn); 0 when the divisor is 0.
inline float scaled_weight_gradient(bag_scaling s, float g, float weight, float weighted_sum, float divisor) noexcept {
  if (divisor == 0.0f) return 0.0f;
  const float slope = s == bag_scaling::sqrtn ? weight / divisor : 1.0f;
  return (g - slope * (weighted_sum / divisor)) / divisor;
}

}  // namespace
}  // namespace embag::detail
