#include "support/linear.hpp"

#include <cmath>
#include <map>
#include <set>

#include "support/run.hpp"

namespace embag::test {

namespace {
double norm_of(const float* row, std::int64_t dim, float p) {
  double n = 0.0;
  for (std::int64_t d = 0; d < dim; ++d) {
    const double a = std::fabs(double(row[d]));
    if (std::isinf(p)) n = std::max(n, a);
    else n += std::pow(a, double(p));
  }
  return std::isinf(p) ? n : std::pow(n, 1.0 / double(p));
}
}  // namespace

dense effective_table(const call_case& c) {
  dense w(c.rows, c.dim);
  for (std::int64_t r = 0; r < c.rows; ++r) {
    const float* row = c.table.data() + r * c.row_stride;
    double scale = 1.0;
    if (c.opts.max_norm && c.opts.max_norm_mode == max_norm_flavour::clip) {
      const double n = norm_of(row, c.dim, c.opts.norm_type);
      if (n > *c.opts.max_norm) scale = double(*c.opts.max_norm) / (n + 1e-7);
    }
    for (std::int64_t d = 0; d < c.dim; ++d) w.at(r, d) = double(row[d]) * scale;
  }
  return w;
}

dense incidence(const call_case& c, bool magnitudes) {
  const std::int64_t pad = c.padding();
  dense a(c.out_rows(), c.rows);
  if (c.opts.mode == mode::none) {
    for (std::size_t j = 0; j < c.indices.size(); ++j)
      if (c.indices[j] != pad) a.at(static_cast<std::int64_t>(j), c.indices[j]) = 1.0;
    return a;
  }
  const std::vector<std::int64_t> starts = c.bag_starts();
  for (std::int64_t b = 0; b < c.num_bags(); ++b) {
    double total = 0.0, abs_total = 0.0, squares = 0.0;
    for (std::int64_t j = starts[b]; j < starts[b + 1]; ++j) {
      if (c.indices[j] == pad) continue;
      const double w = c.weights.empty() ? 1.0 : c.weights[j];
      a.at(b, c.indices[j]) += magnitudes ? std::fabs(w) : w;
      total += w;
      abs_total += std::fabs(w);
      squares += w * w;
    }
    double factor = 1.0;
    if (c.opts.mode == mode::mean)  // the float divisor carries its own rounding, relative to sum|w| / |sum w|
      factor = total == 0.0 ? 0.0 : magnitudes ? (std::fabs(total) + abs_total) / (total * total) : 1.0 / total;
    else if (c.opts.mode == mode::sqrtn)  // a sum of squares: no cancellation
      factor = squares == 0.0 ? 0.0 : 1.0 / std::sqrt(squares);
    else
      continue;
    for (std::int64_t r = 0; r < c.rows; ++r) a.at(b, r) *= factor;
  }
  return a;
}

dense matmul(const dense& a, const dense& b) {
  dense y(a.rows, b.cols);
  for (std::int64_t i = 0; i < a.rows; ++i)
    for (std::int64_t k = 0; k < a.cols; ++k) {
      const double aik = a.at(i, k);
      if (aik == 0.0) continue;
      for (std::int64_t j = 0; j < b.cols; ++j) y.at(i, j) += aik * b.at(k, j);
    }
  return y;
}

dense transpose(const dense& a) {
  dense t(a.cols, a.rows);
  for (std::int64_t i = 0; i < a.rows; ++i)
    for (std::int64_t j = 0; j < a.cols; ++j) t.at(j, i) = a.at(i, j);
  return t;
}

dense absolute(const dense& a) {
  dense m = a;
  for (double& x : m.v) x = std::fabs(x);
  return m;
}

dense linear_forward(const call_case& c) { return matmul(incidence(c), effective_table(c)); }

dense linear_backward(const call_case& c, const dense& grad_output, bool magnitudes) {
  dense g = matmul(transpose(incidence(c, magnitudes)), grad_output);
  if (c.opts.scale_grad_by_freq) {
    std::map<std::int64_t, double> count;
    for (std::int64_t i : c.indices)
      if (i != c.padding()) count[i] += 1.0;
    for (const auto& [row, n] : count)
      for (std::int64_t d = 0; d < c.dim; ++d) g.at(row, d) /= n;
  }
  return g;
}

weights_grad_expectation linear_weights_grad(const call_case& c, const dense& grad_output) {
  const std::vector<std::int64_t> starts = c.bag_starts();
  const dense w = effective_table(c);
  const dense g = matmul(grad_output, transpose(w));                          // B x R: <dY_b, W_r>
  const dense g_abs = matmul(absolute(grad_output), transpose(absolute(w)));  // its error scale
  const std::int64_t pad = c.padding();
  weights_grad_expectation e;
  e.value.assign(c.indices.size(), 0.0);
  e.scale.assign(c.indices.size(), 0.0);
  for (std::int64_t b = 0; b < c.num_bags(); ++b) {
    double total = 0.0, abs_total = 0.0, squares = 0.0, weighted = 0.0, weighted_abs = 0.0;
    for (std::int64_t j = starts[b]; j < starts[b + 1]; ++j) {
      if (c.indices[j] == pad) continue;
      e.value[j] = g.at(b, c.indices[j]);
      e.scale[j] = g_abs.at(b, c.indices[j]);
      total += c.weights[j];
      abs_total += std::fabs(c.weights[j]);
      squares += double(c.weights[j]) * c.weights[j];
      weighted += c.weights[j] * e.value[j];
      weighted_abs += std::fabs(c.weights[j]) * e.scale[j];
    }
    if (c.opts.mode == mode::sqrtn) {
      // y = sum(w x) / N, N = sqrt(sum w^2): dy/dw_j = (x_j - w_j y / N) / N
      const double n = std::sqrt(squares);
      for (std::int64_t j = starts[b]; j < starts[b + 1]; ++j) {
        if (c.indices[j] == pad) continue;
        const double w = c.weights[j];
        e.value[j] = n == 0.0 ? 0.0 : (e.value[j] - w * weighted / squares) / n;
        e.scale[j] = n == 0.0 ? 0.0 : (e.scale[j] + std::fabs(w) * weighted_abs / squares) / n;
      }
    }
    if (c.opts.mode != mode::mean) continue;
    for (std::int64_t j = starts[b]; j < starts[b + 1]; ++j) {
      if (c.indices[j] == pad) continue;
      e.value[j] = total == 0.0 ? 0.0 : (e.value[j] - weighted / total) / total;
      // divided by the float sum of the weights twice, whose own rounding is relative to sum|w| / |sum w|
      e.scale[j] = total == 0.0 ? 0.0
                                : (e.scale[j] + weighted_abs / std::fabs(total)) / std::fabs(total) *
                                      (1.0 + 2.0 * abs_total / std::fabs(total));
    }
  }
  return e;
}

::testing::AssertionResult close_to(const dense& want, const dense& scale, const float* got, std::int64_t stride,
                                    double rel) {
  for (std::int64_t i = 0; i < want.rows; ++i)
    for (std::int64_t j = 0; j < want.cols; ++j) {
      const double w = want.at(i, j), g = got[i * stride + j];
      const double allowed = rel * scale.at(i, j) + 1e-30;
      if (!(std::fabs(g - w) <= allowed))
        return ::testing::AssertionFailure() << "at [" << i << "][" << j << "]: want " << w << ", got " << g
                                             << " (allowed error " << allowed << ")";
    }
  return ::testing::AssertionSuccess();
}

}  // namespace embag::test

namespace embag::test {
namespace {

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

// Max has no matrix form: each output is the largest value of its bag, from the row argmax names.
::testing::AssertionResult max_agrees_with_table(const call_case& c, const call_results& r) {
  const std::vector<std::int64_t> starts = c.bag_starts();
  const dense w = effective_table(c);
  const std::int64_t pad = c.padding();
  for (std::int64_t b = 0; b < c.num_bags(); ++b) {
    bool any = false;
    for (std::int64_t j = starts[b]; j < starts[b + 1]; ++j) any |= c.indices[j] != pad;
    for (std::int64_t d = 0; d < c.dim; ++d) {
      const std::int64_t winner = r.argmax[b * c.dim + d];
      const float y = r.out[b * c.out_stride + d];
      if (!any) {
        if (winner != -1 || y != 0.0f)
          return ::testing::AssertionFailure() << "empty bag " << b << ": argmax " << winner << ", value " << y;
        continue;
      }
      // the winner is the first non-padding entry of the bag holding the largest value
      std::int64_t first_best = -1;
      double best = 0;
      for (std::int64_t j = starts[b]; j < starts[b + 1]; ++j) {
        if (c.indices[j] == pad) continue;
        const double v = w.at(c.indices[j], d);
        if (first_best < 0 || v > best) {
          best = v;
          first_best = c.indices[j];
        }
      }
      if (!(std::fabs(y - best) <= 1e-6 * std::fabs(best)) || !(std::fabs(w.at(winner, d) - best) <= 1e-6 * std::fabs(best)))
        return ::testing::AssertionFailure() << "bag " << b << " dim " << d << ": max " << y << " from row " << winner
                                             << ", want " << best;
      if (!c.opts.max_norm && winner != first_best)
        return ::testing::AssertionFailure() << "bag " << b << " dim " << d << ": argmax " << winner
                                             << ", but ties go to the first occurrence, row " << first_best;
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace

std::vector<double> weights_grad_error_scale(const call_case& c, const call_results& r) {
  return linear_weights_grad(after_forward(c, r), as_dense(r.grad_output, c.out_rows(), c.dim, c.dim)).scale;
}

::testing::AssertionResult agrees_with_linear(const call_case& c, const call_results& r) {
  const std::vector<std::int64_t> starts = c.bag_starts();
  const call_case seen = after_forward(c, r);
  const dense dy = as_dense(r.grad_output, c.out_rows(), c.dim, c.dim);
  // A float sum of n terms may be off by about n roundings of its running value: the allowed
  // error grows with the longest bag (forward) and the most repeated row (backward, plus the start).
  std::int64_t longest_bag = 1, most_repeated = 1;
  std::map<std::int64_t, std::int64_t> repeats;
  for (std::int64_t b = 0; b < c.num_bags(); ++b) {
    std::int64_t n = 0;
    for (std::int64_t j = starts[b]; j < starts[b + 1]; ++j) {
      if (c.indices[j] == c.padding()) continue;
      ++n;
      most_repeated = std::max(most_repeated, ++repeats[c.indices[j]]);
    }
    longest_bag = std::max(longest_bag, n);
  }
  const auto rel_for = [](std::int64_t terms) { return std::max(1e-5, 2.0 * static_cast<double>(terms) * 0x1p-24); };
  const double rel = rel_for(longest_bag), grad_rel = rel_for(most_repeated + 1);

  if (c.opts.mode == mode::max) {
    if (auto agrees = max_agrees_with_table(seen, r); !agrees) return agrees << " (forward max)";
  } else {
    const dense want = linear_forward(seen);
    const dense scale = matmul(incidence(seen, true), absolute(effective_table(seen)));
    if (auto close = close_to(want, scale, r.out.data(), c.out_stride, rel); !close) return close << " (forward)";
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
    grad_scale = linear_backward(seen, absolute(dy), true);
  }
  const std::vector<float> start = grad_start_for(c);
  std::vector<float> dense_minus_start(static_cast<std::size_t>(c.rows * c.dim));
  for (std::size_t i = 0; i < dense_minus_start.size(); ++i) {
    dense_minus_start[i] = static_cast<float>(double(r.dense_grad[i]) - start[i]);
    grad_scale.v[i] += std::fabs(start[i]) + std::fabs(want_grad.v[i]);
  }
  if (auto close = close_to(want_grad, grad_scale, dense_minus_start.data(), c.dim, grad_rel); !close)
    return close << " (backward dense)";

  std::set<std::int64_t> referenced;
  for (std::int64_t i : c.indices)
    if (i != c.padding()) referenced.insert(i);
  if (std::vector<std::int64_t>(referenced.begin(), referenced.end()) != r.sparse.rows ||
      r.sparse.values.size() != referenced.size() * c.dim)
    return ::testing::AssertionFailure() << "backward sparse: not the rows the call references";
  for (std::size_t u = 0; u < r.sparse.rows.size(); ++u)
    for (std::int64_t d = 0; d < c.dim; ++d) {
      const std::int64_t row = r.sparse.rows[u];
      const double got = r.sparse.values[u * c.dim + d];
      if (!(std::fabs(got - want_grad.at(row, d)) <= grad_rel * grad_scale.at(row, d) + 1e-30))
        return ::testing::AssertionFailure() << "backward sparse row " << row << " dim " << d << ": " << got
                                             << ", want " << want_grad.at(row, d);
    }

  if (!c.weights.empty()) {
    const weights_grad_expectation e = linear_weights_grad(seen, dy);
    for (std::size_t j = 0; j < c.weights.size(); ++j)
      if (!(std::fabs(r.weights_grad[j] - e.value[j]) <= 1e-5 * e.scale[j] + 1e-30))
        return ::testing::AssertionFailure() << "weights grad [" << j << "]: " << r.weights_grad[j] << ", want "
                                             << e.value[j];
  }
  return ::testing::AssertionSuccess();
}

}  // namespace embag::test
