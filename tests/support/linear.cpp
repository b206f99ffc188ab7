#include "support/linear.hpp"

#include <cmath>
#include <map>

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

dense incidence(const call_case& c) {
  const std::int64_t pad = c.padding();
  dense a(c.out_rows(), c.rows);
  if (c.opts.mode == mode::none) {
    for (std::size_t j = 0; j < c.indices.size(); ++j)
      if (c.indices[j] != pad) a.at(static_cast<std::int64_t>(j), c.indices[j]) = 1.0;
    return a;
  }
  for (std::int64_t b = 0; b < c.num_bags(); ++b) {
    double total = 0.0;
    for (std::int64_t j = c.bag_begin[b]; j < c.bag_begin[b + 1]; ++j) {
      if (c.indices[j] == pad) continue;
      const double w = c.weights.empty() ? 1.0 : c.weights[j];
      a.at(b, c.indices[j]) += w;
      total += w;
    }
    if (c.opts.mode == mode::mean)
      for (std::int64_t r = 0; r < c.rows; ++r) a.at(b, r) = total == 0.0 ? 0.0 : a.at(b, r) / total;
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

dense linear_backward(const call_case& c, const dense& grad_output) {
  dense g = matmul(transpose(incidence(c)), grad_output);
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
  const dense w = effective_table(c);
  const dense g = matmul(grad_output, transpose(w));                          // B x R: <dY_b, W_r>
  const dense g_abs = matmul(absolute(grad_output), transpose(absolute(w)));  // its error scale
  const std::int64_t pad = c.padding();
  weights_grad_expectation e;
  e.value.assign(c.indices.size(), 0.0);
  e.scale.assign(c.indices.size(), 0.0);
  for (std::int64_t b = 0; b < c.num_bags(); ++b) {
    double total = 0.0, weighted = 0.0, weighted_abs = 0.0;
    for (std::int64_t j = c.bag_begin[b]; j < c.bag_begin[b + 1]; ++j) {
      if (c.indices[j] == pad) continue;
      e.value[j] = g.at(b, c.indices[j]);
      e.scale[j] = g_abs.at(b, c.indices[j]);
      total += c.weights[j];
      weighted += c.weights[j] * e.value[j];
      weighted_abs += std::fabs(c.weights[j]) * e.scale[j];
    }
    if (c.opts.mode != mode::mean) continue;
    for (std::int64_t j = c.bag_begin[b]; j < c.bag_begin[b + 1]; ++j) {
      if (c.indices[j] == pad) continue;
      e.value[j] = total == 0.0 ? 0.0 : (e.value[j] - weighted / total) / total;
      e.scale[j] = total == 0.0 ? 0.0 : (e.scale[j] + weighted_abs / std::fabs(total)) / std::fabs(total);
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
