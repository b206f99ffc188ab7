// Randomised differential tests over the whole option space (seeded, printed, reproducible):
//  - the scalar reference against the Linear (one-hot matmul) reference;
//  - every ISA this CPU has against the scalar reference: bit for bit for forward (every mode)
//    and backward (dense and sparse), within rounding for the per-sample-weight gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>

#include "support/linear.hpp"
#include "support/run.hpp"

namespace embag::test {
namespace {

constexpr std::uint64_t base_seed = 20261123;

int cases_per_isa() {
  const char* env = std::getenv("EMBAG_TEST_CASES");
  return env ? std::atoi(env) : 2000;
}

dense as_dense(const std::vector<float>& v, std::int64_t rows, std::int64_t cols, std::int64_t stride) {
  dense m(rows, cols);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) m.at(i, j) = v[static_cast<std::size_t>(i * stride + j)];
  return m;
}

// The case as the Linear reference must see it after forward: in-place max_norm has already
// rescaled the table, so the gradient and weights gradient read the rescaled rows unclipped.
call_case after_forward(const call_case& c, const call_results& r) {
  call_case after = c;
  after.table = r.table_after;
  if (c.opts.max_norm_mode == max_norm_flavour::in_place) after.opts.max_norm.reset();
  return after;
}

void check_max_against_table(const call_case& c, const call_results& r) {
  const dense w = effective_table(c);
  const std::int64_t pad = c.padding();
  for (std::int64_t b = 0; b < c.num_bags(); ++b) {
    bool any = false;
    for (std::int64_t j = c.bag_begin[b]; j < c.bag_begin[b + 1]; ++j) any |= c.indices[j] != pad;
    for (std::int64_t d = 0; d < c.dim; ++d) {
      const std::int64_t winner = r.argmax[b * c.dim + d];
      const float y = r.out[b * c.out_stride + d];
      if (!any) {
        ASSERT_EQ(winner, -1) << "bag " << b;
        ASSERT_EQ(y, 0.0f) << "bag " << b;
        continue;
      }
      // the winner is the first non-padding entry of the bag holding the largest value
      std::int64_t first_best = -1;
      double best = 0;
      for (std::int64_t j = c.bag_begin[b]; j < c.bag_begin[b + 1]; ++j) {
        if (c.indices[j] == pad) continue;
        const double v = w.at(c.indices[j], d);
        if (first_best < 0 || v > best) {
          best = v;
          first_best = c.indices[j];
        }
      }
      ASSERT_NEAR(y, best, 1e-6 * std::fabs(best)) << "bag " << b << " dim " << d;
      ASSERT_NEAR(w.at(winner, d), best, 1e-6 * std::fabs(best)) << "bag " << b << " dim " << d;
      if (!c.opts.max_norm) {
        ASSERT_EQ(winner, first_best) << "ties go to the first occurrence; bag " << b;
      }
    }
  }
}

void check_against_linear(const call_case& c, const call_results& r) {
  const call_case seen = after_forward(c, r);
  const dense dy = as_dense(r.grad_output, c.out_rows(), c.dim, c.dim);
  constexpr double rel = 1e-5;

  if (c.opts.mode == mode::max) {
    check_max_against_table(seen, r);
  } else {
    const dense want = linear_forward(seen);
    const dense scale = matmul(absolute(incidence(seen)), absolute(effective_table(seen)));
    ASSERT_TRUE(close_to(want, scale, r.out.data(), c.out_stride, rel)) << "forward";
  }

  // Backward: dense = start + A^T dY, sparse = the same rows.
  dense want_grad(c.rows, c.dim), grad_scale(c.rows, c.dim);
  if (c.opts.mode == mode::max) {
    std::vector<double> count(static_cast<std::size_t>(c.rows), 0.0);
    for (std::int64_t i : c.indices)
      if (i != c.padding()) count[i] += 1.0;
    for (std::int64_t b = 0; b < c.num_bags(); ++b)
      for (std::int64_t d = 0; d < c.dim; ++d) {
        const std::int64_t row = r.argmax[b * c.dim + d];
        if (row < 0) continue;
        const double v = dy.at(b, d) / (c.opts.scale_grad_by_freq ? count[row] : 1.0);
        want_grad.at(row, d) += v;
        grad_scale.at(row, d) += std::fabs(v);
      }
  } else {
    want_grad = linear_backward(seen, dy);
    call_case magnitudes = seen;
    for (float& w : magnitudes.weights) w = std::fabs(w);
    grad_scale = linear_backward(magnitudes, absolute(dy));
  }
  const std::vector<float> start = grad_start_for(c);
  dense dense_minus_start(c.rows, c.dim);
  for (std::int64_t i = 0; i < c.rows * c.dim; ++i) {
    dense_minus_start.v[i] = double(r.dense_grad[i]) - start[i];
    grad_scale.v[i] += std::fabs(start[i]) + std::fabs(want_grad.v[i]);
  }
  ASSERT_TRUE(close_to(want_grad, grad_scale, std::vector<float>(dense_minus_start.v.begin(), dense_minus_start.v.end()).data(), c.dim, rel))
      << "backward dense";

  std::set<std::int64_t> referenced;
  for (std::int64_t i : c.indices)
    if (i != c.padding()) referenced.insert(i);
  ASSERT_EQ(std::vector<std::int64_t>(referenced.begin(), referenced.end()), r.sparse.rows) << "sparse rows";
  ASSERT_EQ(r.sparse.values.size(), referenced.size() * c.dim);
  for (std::size_t u = 0; u < r.sparse.rows.size(); ++u)
    for (std::int64_t d = 0; d < c.dim; ++d) {
      const std::int64_t row = r.sparse.rows[u];
      ASSERT_NEAR(r.sparse.values[u * c.dim + d], want_grad.at(row, d), rel * grad_scale.at(row, d) + 1e-30)
          << "sparse row " << row << " dim " << d;
    }

  if (!c.weights.empty()) {
    const weights_grad_expectation e = linear_weights_grad(seen, dy);
    for (std::size_t j = 0; j < c.weights.size(); ++j)
      ASSERT_NEAR(r.weights_grad[j], e.value[j], 1e-5 * e.scale[j] + 1e-30) << "weights grad [" << j << "]";
  }
}

TEST(Differential, ReferenceAgreesWithLinear) {
  const int n = cases_per_isa();
  std::printf("reference vs Linear: %d cases, seeds %llu..%llu\n", n, (unsigned long long)base_seed,
              (unsigned long long)(base_seed + n - 1));
  for (int i = 0; i < n; ++i) {
    const call_case c = random_case(base_seed + i);
    SCOPED_TRACE(c.describe());
    const call_results r = run_case(c, isa::reference, 1);
    check_against_linear(c, r);
    if (HasFatalFailure()) return;
  }
}

class EveryIsa : public ::testing::TestWithParam<isa> {};

TEST_P(EveryIsa, MatchesReferenceBitForBit) {
  const isa which = GetParam();
  const int n = cases_per_isa();
  const std::uint64_t seed0 = base_seed + 1000003 * (static_cast<std::uint64_t>(which) + 1);
  std::printf("%s vs reference: %d cases, seeds %llu..%llu\n", std::string(to_string(which)).c_str(), n,
              (unsigned long long)seed0, (unsigned long long)(seed0 + n - 1));
  for (int i = 0; i < n; ++i) {
    case_limits limits;
    limits.allow_nan = true;
    const call_case c = random_case(seed0 + i, limits);
    const int threads = 1 + i % 3;
    SCOPED_TRACE(c.describe() + " threads=" + std::to_string(threads));
    const call_results want = run_case(c, isa::reference, 1);
    const call_results got = run_case(c, which, threads);
    ASSERT_TRUE(same_bits(want.out, got.out, c.out_rows(), c.dim, c.out_stride)) << "forward";
    ASSERT_EQ(want.argmax, got.argmax) << "argmax";
    if (!got.out_without_argmax.empty())
      ASSERT_TRUE(same_bits(want.out, got.out_without_argmax, c.out_rows(), c.dim, c.out_stride))
          << "max without argmax";
    ASSERT_TRUE(same_bits(want.table_after, got.table_after, c.rows, c.dim, c.row_stride)) << "table";
    ASSERT_TRUE(same_bits(want.dense_grad, got.dense_grad, c.rows, c.dim, c.dim)) << "backward dense";
    ASSERT_EQ(want.sparse.rows, got.sparse.rows) << "sparse rows";
    ASSERT_TRUE(same_bits(want.sparse.values, got.sparse.values, static_cast<std::int64_t>(want.sparse.rows.size()),
                          c.dim, c.dim))
        << "backward sparse";
    for (std::size_t j = 0; j < want.weights_grad.size(); ++j) {
      if (std::isnan(want.weights_grad[j])) {
        ASSERT_TRUE(std::isnan(got.weights_grad[j])) << "weights grad [" << j << "]";
        continue;
      }
      const double tolerance = 1e-5 * (std::fabs(want.weights_grad[j]) + 1.0) * std::sqrt(double(c.dim));
      ASSERT_NEAR(want.weights_grad[j], got.weights_grad[j], tolerance) << "weights grad [" << j << "]";
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
