// The Linear reference of the seeds: an embedding bag is Y = A.W with A the dense B x R
// bag-incidence matrix (one-hot rows, counts, weights, mean scaling, padding excluded), and its
// gradient is dW = A^T.dY. Built densely and multiplied with plain triple loops in double, with
// |A|.|W| alongside as the scale of the rounding error a float kernel may make.
#pragma once

#include <vector>

#include "support/cases.hpp"

namespace embag::test {

struct dense {
  std::int64_t rows = 0, cols = 0;
  std::vector<double> v;
  dense(std::int64_t r, std::int64_t c) : rows(r), cols(c), v(static_cast<std::size_t>(r * c), 0.0) {}
  double& at(std::int64_t r, std::int64_t c) { return v[static_cast<std::size_t>(r * cols + c)]; }
  double at(std::int64_t r, std::int64_t c) const { return v[static_cast<std::size_t>(r * cols + c)]; }
};

// The table as forward sees it (rows clipped by max_norm when the case asks), R x D.
dense effective_table(const call_case& c);
// A: output_rows x R (mode none: one one-hot row per index). Not defined for mode max. With
// magnitudes, the scale of the rounding error a float kernel makes through A instead: |w| summed per
// entry (a row repeated in a bag with weights of both signs cancels in A, not in the rounding).
dense incidence(const call_case& c, bool magnitudes = false);
dense matmul(const dense& a, const dense& b);
dense transpose(const dense& a);
dense absolute(const dense& a);

// Forward / backward per the Linear view, for sum, mean and none; max is checked through argmax.
dense linear_forward(const call_case& c);
dense linear_backward(const call_case& c, const dense& grad_output, bool magnitudes = false);  // R x D, freq-scaled
// Per index: the gradient and the scale of its rounding error (the same formula on magnitudes).
struct weights_grad_expectation {
  std::vector<double> value, scale;
};
weights_grad_expectation linear_weights_grad(const call_case& c, const dense& grad_output);
struct call_results;
// That scale for a run of c: the magnitudes of the terms each gradient is made of, which a scaled
// reduction may cancel to nothing (a bag of one weight under sqrtn: exactly 0 in exact arithmetic,
// the rounding of two equal terms in float).
std::vector<double> weights_grad_error_scale(const call_case& c, const call_results& r);

// |got - want| <= rel * scale + abs_floor at every cell; reports the first violation.
::testing::AssertionResult close_to(const dense& want, const dense& scale, const float* got, std::int64_t stride,
                                    double rel);

// Whether a run of c (on the reference, say) agrees with the Linear view: forward (max through the
// table and argmax), backward dense and sparse, and the per-sample-weights gradient, each within
// 1e-5 of the rounding scale |A|.|W| (or its backward analogue). The first disagreement otherwise.
::testing::AssertionResult agrees_with_linear(const call_case& c, const call_results& r);

}  // namespace embag::test
