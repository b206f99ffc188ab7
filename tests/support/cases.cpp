#include "support/cases.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

namespace embag::test {

call_case make_case(std::int64_t rows, std::int64_t dim, const std::vector<std::int64_t>& indices,
                    const std::vector<std::int64_t>& offsets) {
  call_case c;
  c.seed = 1;
  c.rows = rows;
  c.dim = dim;
  c.row_stride = dim;
  std::mt19937_64 rng(*c.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  c.table.resize(static_cast<std::size_t>(rows * dim));
  for (float& v : c.table) v = normal(rng);
  c.indices = indices;
  c.boundaries = offsets;
  c.out_stride = dim;
  c.copy_to_32_bits();
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
