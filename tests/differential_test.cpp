// Randomised differential tests over the whole option space (seeded, printed, reproducible):
//  - the scalar reference against the Linear (one-hot matmul) reference;
//  - every ISA this CPU has against the scalar reference: bit for bit for forward (every mode)
//    and backward (dense and sparse), within rounding for the per-sample-weight gradient.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "support/linear.hpp"
#include "support/run.hpp"

namespace embag::test {
namespace {

constexpr std::uint64_t base_seed = 20261123;

int cases_per_isa() {
  const char* env = std::getenv("EMBAG_TEST_CASES");
  return env ? std::atoi(env) : 2000;
}

TEST(Differential, ReferenceAgreesWithLinear) {
  const int n = cases_per_isa();
  std::printf("reference vs Linear: %d cases, seeds %llu..%llu\n", n, (unsigned long long)base_seed,
              (unsigned long long)(base_seed + n - 1));
  for (int i = 0; i < n; ++i) {
    const call_case c = random_call(base_seed + i);
    SCOPED_TRACE(c.describe());
    const call_results r = run_case(c, isa::reference, 1);
    ASSERT_TRUE(agrees_with_linear(c, r));
  }
}

// Found by fuzz_linear: a row repeated in a bag with weights of both signs cancels in A, so
// |A|.|W| understated the rounding error of the float sum and a correct result was rejected.
TEST(FuzzRegression, LinearScaleOfCancellingWeightsOnARepeatedRow) {
  call_case c = make_case(1, 1, {0, 0, 0, 0, 0, 0, 0}, {0});
  c.table = {0.646308899f};
  c.weights = {0.145209864f, -0.0322646648f, 1.26023602f, 1.02250612f, 1.43349195f, -1.89843786f, -1.90588903f};
  const call_results r = run_case(c, isa::reference, 1);
  ASSERT_TRUE(agrees_with_linear(c, r));
}

// Found by fuzz_linear: 243 mean contributions to one row (bags of 82, 0, 0, 96 and 65), added in
// float onto a start of magnitude 2, drift by more than 1e-5 of the scale; the allowed error now
// grows with the number of terms.
TEST(FuzzRegression, LinearToleranceGrowsWithTheTermsOfARow) {
  call_case c = make_case(1, 128, std::vector<std::int64_t>(243, 0), {0, 82, 82, 82, 178});
  c.opts.mode = mode::mean;
  c.opts.scale_grad_by_freq = true;
  const call_results r = run_case(c, isa::reference, 1);
  ASSERT_TRUE(agrees_with_linear(c, r));
}

// Found by fuzz_linear: weights of a mean that nearly cancel (sum 0.4 out of 2000) leave the float
// divisor with a relative error near 1e-4, which the weights gradient divides by twice.
TEST(FuzzRegression, LinearWeightsGradScaleCountsTheDivisorsRounding) {
  call_case c = make_case(3, 16, {0, 1, 2}, {0});
  c.opts.mode = mode::mean;
  c.weights = {1000.1f, 0.3f, -1000.0f};  // 1000.1 + 0.3 rounds in float
  const call_results r = run_case(c, isa::reference, 1);
  ASSERT_TRUE(agrees_with_linear(c, r));
}

class EveryIsa : public ::testing::TestWithParam<isa> {};

TEST_P(EveryIsa, MatchesReferenceBitForBit) {
  const isa which = GetParam();
  const int n = cases_per_isa();
  const std::uint64_t seed0 = base_seed + 1000003 * (static_cast<std::uint64_t>(which) + 1);
  std::printf("%s vs reference: %d cases, seeds %llu..%llu\n", std::string(to_string(which)).c_str(), n,
              (unsigned long long)seed0, (unsigned long long)(seed0 + n - 1));
  for (int i = 0; i < n; ++i) {
    call_limits limits;
    limits.allow_nan = true;
    const call_case c = random_call(seed0 + i, limits);
    const int threads = 1 + i % 3;
    SCOPED_TRACE(c.describe() + " threads=" + std::to_string(threads));
    const call_results want = run_case(c, isa::reference, 1);
    const call_results got = run_case(c, which, threads);
    ASSERT_TRUE(same_bits(want.out, got.out, c.out_rows(), c.dim, c.out_stride)) << "forward";
    ASSERT_EQ(want.argmax, got.argmax) << "argmax";
    if (!got.out_without_argmax.empty()) {
      ASSERT_TRUE(same_bits(want.out, got.out_without_argmax, c.out_rows(), c.dim, c.out_stride))
          << "max without argmax";
    }
    ASSERT_TRUE(same_bits(want.table_after, got.table_after, c.rows, c.dim, c.row_stride)) << "table";
    ASSERT_TRUE(same_bits(want.dense_grad, got.dense_grad, c.rows, c.dim, c.dim)) << "backward dense";
    ASSERT_EQ(want.sparse.rows, got.sparse.rows) << "sparse rows";
    ASSERT_TRUE(same_bits(want.sparse.values, got.sparse.values, static_cast<std::int64_t>(want.sparse.rows.size()),
                          c.dim, c.dim))
        << "backward sparse";
    // Both round their dot products and the scaled terms: within twice the Linear check's allowance
    // of the terms' magnitudes (what a bag of one under sqrtn cancels) or of the value itself.
    const std::vector<double> error_scale = want.weights_grad.empty() ? std::vector<double>{} : weights_grad_error_scale(c, want);
    for (std::size_t j = 0; j < want.weights_grad.size(); ++j) {
      if (std::isnan(want.weights_grad[j])) {
        ASSERT_TRUE(std::isnan(got.weights_grad[j])) << "weights grad [" << j << "]";
        continue;
      }
      const double tolerance = std::max(1e-5 * (std::fabs(want.weights_grad[j]) + 1.0) * std::sqrt(double(c.dim)),
                                        2e-5 * error_scale[j]);
      ASSERT_NEAR(want.weights_grad[j], got.weights_grad[j], tolerance) << "weights grad [" << j << "]";
    }
  }
}

// Bags of one index each take a loop of their own in the kernels (no boundary read per bag), which
// validation chooses from the offsets or lengths. One-index bags in every layout, and the near
// misses (as many indices as bags, but one bag empty and another of two; no bag empty, one of two), agree
// with the reference bit for bit, forward and backward, on one thread and on several.
TEST_P(EveryIsa, OneIndexEachAndItsNearMisses) {
  const std::vector<std::vector<std::int64_t>> bag_lengths = {
      {1, 1, 1, 1, 1, 1}, {1}, {1, 0, 2, 1, 1, 1}, {1, 1, 1, 1, 2, 0}, {2, 1, 1, 1, 1, 0}, {0, 1, 1, 1, 1, 2}, {2, 0},
      {1, 1, 2, 1}, {1, 1, 1, 2}};
  for (const std::vector<std::int64_t>& lengths : bag_lengths)
    for (const std::int64_t dim : {64, 20})  // a register-resident width, and the general path
      for (const int layout : {0, 1, 2})     // offsets, offsets with the last, lengths
        for (const mode m : {mode::sum, mode::mean, mode::max}) {
          std::vector<std::int64_t> offsets, indices;
          for (const std::int64_t n : lengths) {
            offsets.push_back(std::ssize(indices));
            for (std::int64_t j = 0; j < n; ++j) indices.push_back((std::ssize(indices) * 7 + 3) % 11);
          }
          call_case c = make_case(11, dim, indices, offsets);
          c.opts.mode = m;
          if (layout == 1) {
            c.opts.include_last_offset = true;
            c.boundaries.push_back(std::ssize(indices));
          }
          if (layout == 2) {
            c.layout = bag_layout::lengths;
            c.boundaries = lengths;
          }
          c.copy_to_32_bits();
          for (const int threads : {1, 3}) {
            SCOPED_TRACE(c.describe() + " threads=" + std::to_string(threads));
            const call_results want = run_case(c, isa::reference, 1);
            const call_results got = run_case(c, GetParam(), threads);
            ASSERT_TRUE(same_bits(want.out, got.out, c.out_rows(), c.dim, c.out_stride)) << "forward";
            ASSERT_TRUE(same_bits(want.dense_grad, got.dense_grad, c.rows, c.dim, c.dim)) << "backward dense";
            ASSERT_EQ(want.sparse.rows, got.sparse.rows) << "sparse rows";
            ASSERT_TRUE(same_bits(want.sparse.values, got.sparse.values, std::ssize(want.sparse.rows), c.dim, c.dim))
                << "backward sparse";
          }
        }
}

std::vector<isa> simd_isas() {
  std::vector<isa> list;
  for (isa i : available_isas())
    if (i != isa::reference) list.push_back(i);
  return list;
}

INSTANTIATE_TEST_SUITE_P(Available, EveryIsa, ::testing::ValuesIn(simd_isas()),
                         [](const auto& info) { return std::string(to_string(info.param)); });

}  // namespace
}  // namespace embag::test
