#include "support/cases.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

namespace embag::test {

bags call_case::batch() const {
  const index_span ix = index32 ? index_span(indices32) : index_span(indices64);
  const index_span bounds = boundary32 ? index_span(boundaries32) : index_span(boundaries64);
  bags b;
  b.indices = ix;
  b.layout = layout;
  if (layout == bag_layout::fixed_length) b.fixed_length = fixed_length;
  else b.boundaries = bounds;
  b.per_sample_weights = weights;
  return b;
}

std::int64_t call_case::padding() const {
  if (!opts.padding_idx) return -1;
  return *opts.padding_idx < 0 ? *opts.padding_idx + rows : *opts.padding_idx;
}

std::string call_case::describe() const {
  std::ostringstream s;
  const char* layouts[] = {"offsets", "lengths", "fixed"};
  s << "seed=" << seed << " R=" << rows << " D=" << dim << " stride=" << row_stride << " B=" << num_bags()
    << " nnz=" << indices.size() << " mode=" << to_string(opts.mode) << " layout=" << layouts[int(layout)]
    << (opts.include_last_offset ? "+last" : "") << " idx" << (index32 ? 32 : 64) << " bounds"
    << (boundary32 ? 32 : 64) << " weights=" << !weights.empty() << " padding=";
  if (opts.padding_idx) s << *opts.padding_idx;
  else s << "none";
  if (opts.max_norm)
    s << " max_norm=" << *opts.max_norm << " p=" << opts.norm_type
      << (opts.max_norm_mode == max_norm_flavour::clip ? " clip" : " in_place");
  s << " freq=" << opts.scale_grad_by_freq << " out_stride=" << out_stride;
  return s.str();
}

namespace {

// Stores indices and bag boundaries in the layout and integer widths of the case.
void encode(call_case& c) {
  const std::int64_t bags = c.num_bags();
  c.indices32.assign(c.indices.begin(), c.indices.end());
  c.indices64 = c.indices;
  std::vector<std::int64_t> bounds;
  if (c.layout == bag_layout::offsets) {
    bounds.assign(c.bag_begin.begin(), c.bag_begin.end() - (c.opts.include_last_offset ? 0 : 1));
  } else if (c.layout == bag_layout::lengths) {
    for (std::int64_t b = 0; b < bags; ++b) bounds.push_back(c.bag_begin[b + 1] - c.bag_begin[b]);
  }
  c.boundaries32.assign(bounds.begin(), bounds.end());
  c.boundaries64 = bounds;
}

}  // namespace

call_case random_case(std::uint64_t seed, const case_limits& limits) {
  std::mt19937_64 rng(seed);
  const auto uniform = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  const auto chance = [&](double p) { return std::bernoulli_distribution(p)(rng); };

  call_case c;
  c.seed = seed;
  static const std::int64_t special_dims[] = {16, 32, 64, 128, 256};
  c.dim = chance(0.4) ? special_dims[uniform(0, 4)] : uniform(1, limits.max_dim);
  c.dim = std::min(c.dim, limits.max_dim);
  c.rows = chance(0.3) ? uniform(1, 4) : uniform(1, limits.max_rows);  // few rows: many repeats
  c.row_stride = c.dim + (chance(0.25) ? uniform(1, 9) : 0);
  c.table.resize(static_cast<std::size_t>(c.rows * c.row_stride));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : c.table) v = normal(rng);
  if (chance(0.2))  // ties for max
    for (float& v : c.table) v = std::round(v * 2.0f);
  if (limits.allow_nan && chance(0.1))
    for (float& v : c.table)
      if (chance(0.05)) v = std::numeric_limits<float>::quiet_NaN();

  c.opts.mode = static_cast<mode>(uniform(0, 4));  // sum, mean, max, none, sqrtn
  c.index32 = chance(0.5);
  c.boundary32 = chance(0.5);
  const int layout = static_cast<int>(uniform(0, 3));  // offsets, offsets + last, lengths, fixed
  c.layout = layout == 3 ? bag_layout::fixed_length : layout == 2 ? bag_layout::lengths : bag_layout::offsets;
  c.opts.include_last_offset = layout == 1;

  const std::int64_t bags = uniform(0, limits.max_bags);
  c.bag_begin.push_back(0);
  const std::int64_t fixed = uniform(1, std::max<std::int64_t>(1, limits.max_bag_length / 2));
  for (std::int64_t b = 0; b < bags; ++b) {
    std::int64_t len = fixed;
    if (c.layout != bag_layout::fixed_length) {
      const int kind = static_cast<int>(uniform(0, 9));
      len = kind == 0 ? 0 : kind == 1 ? 1 : kind == 2 ? limits.max_bag_length * 4 : uniform(0, limits.max_bag_length);
    }
    c.bag_begin.push_back(c.bag_begin.back() + len);
  }
  if (c.layout == bag_layout::fixed_length) c.fixed_length = fixed;
  if (c.layout == bag_layout::offsets && !c.opts.include_last_offset && bags == 0)
    c.bag_begin = {0};  // no offsets: no indices

  const std::int64_t nnz = c.bag_begin.back();
  for (std::int64_t j = 0; j < nnz; ++j) c.indices.push_back(uniform(0, c.rows - 1));

  if ((c.opts.mode == mode::sum || c.opts.mode == mode::mean || c.opts.mode == mode::sqrtn) && chance(0.5)) {
    // a weighted mean divides by the sum of weights: keep it away from 0 (tested by hand)
    std::uniform_real_distribution<float> w(c.opts.mode == mode::mean ? 0.1f : -1.0f, 2.0f);
    for (std::int64_t j = 0; j < nnz; ++j) c.weights.push_back(chance(0.05) ? 0.0f : w(rng));
  }
  if (chance(0.3)) {
    const std::int64_t p = uniform(0, c.rows - 1);
    c.opts.padding_idx = chance(0.5) ? p : p - c.rows;
    for (std::int64_t j = 0; j < nnz; ++j)  // make padding frequent
      if (chance(0.2)) c.indices[j] = p;
  }
  if (limits.allow_max_norm && chance(0.2)) {
    static const float norm_types[] = {1.0f, 2.0f, 3.0f, std::numeric_limits<float>::infinity()};
    c.opts.max_norm = std::uniform_real_distribution<float>(0.5f, 8.0f)(rng);
    c.opts.norm_type = norm_types[uniform(0, 3)];
    c.opts.max_norm_mode = chance(0.7) ? max_norm_flavour::clip : max_norm_flavour::in_place;
  }
  c.opts.scale_grad_by_freq = chance(0.3);
  // Prefetch never changes a result: any level, any distance (past the end of the indices too).
  static const prefetch_level levels[] = {prefetch_level::automatic, prefetch_level::none, prefetch_level::l1,
                                          prefetch_level::l2};
  c.opts.execution.prefetch = {levels[uniform(0, 3)], static_cast<int>(chance(0.5) ? 0 : uniform(1, 300))};
  c.out_stride = c.dim + (chance(0.25) ? uniform(1, 5) : 0);
  encode(c);
  return c;
}

call_case make_case(std::int64_t rows, std::int64_t dim, const std::vector<std::int64_t>& indices,
                    const std::vector<std::int64_t>& offsets, options opts, std::uint64_t seed) {
  call_case c;
  c.seed = seed;
  c.rows = rows;
  c.dim = dim;
  c.row_stride = dim;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  c.table.resize(static_cast<std::size_t>(rows * dim));
  for (float& v : c.table) v = normal(rng);
  c.indices = indices;
  c.bag_begin = offsets;
  c.bag_begin.push_back(static_cast<std::int64_t>(indices.size()));
  c.opts = opts;
  c.out_stride = dim;
  encode(c);
  return c;
}

std::vector<float> canary_buffer(std::int64_t rows, std::int64_t stride) {
  std::vector<float> v(static_cast<std::size_t>(std::max<std::int64_t>(rows * stride, 1)));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = -12345.0f - static_cast<float>(i % 7);
  return v;
}

::testing::AssertionResult same_bits(const std::vector<float>& expected, const std::vector<float>& actual,
                                     std::int64_t rows, std::int64_t dim, std::int64_t stride) {
  // any NaN equals any NaN: the sign and payload of NaN + NaN follow the compiler's operand order
  const auto same = [](float a, float b) { return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof a) == 0; };
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t d = 0; d < dim; ++d) {
      const std::size_t i = static_cast<std::size_t>(r * stride + d);
      if (!same(expected[i], actual[i]))
        return ::testing::AssertionFailure() << "first difference at [" << r << "][" << d << "]: expected "
                                             << expected[i] << ", got " << actual[i];
    }
  if (expected.size() != actual.size() || !std::equal(expected.begin(), expected.end(), actual.begin(), same))
    return ::testing::AssertionFailure() << "cells outside rows x dim differ (padding of the stride was written)";
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult gaps_untouched(const std::vector<float>& before, const std::vector<float>& after,
                                          std::int64_t rows, std::int64_t dim, std::int64_t stride) {
  for (std::int64_t i = 0; i < std::ssize(after); ++i) {
    const bool inside = i < rows * stride && i % stride < dim;
    if (!inside && std::memcmp(&before[i], &after[i], sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "cell " << i << " (row " << i / stride << ", column " << i % stride
                                           << ") outside the " << dim << " columns was written: " << after[i];
  }
  return ::testing::AssertionSuccess();
}

}  // namespace embag::test
