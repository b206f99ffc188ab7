#include "support/run.hpp"

namespace embag::test {

std::vector<float> grad_output_for(const call_case& c) {
  std::mt19937_64 rng(c.seed.value_or(0) * 7919 + 17);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> g(static_cast<std::size_t>(std::max<std::int64_t>(c.out_rows() * c.dim, 1)));
  for (float& v : g) v = normal(rng);
  return g;
}

std::vector<float> grad_start_for(const call_case& c) {
  std::vector<float> g(static_cast<std::size_t>(c.rows * c.dim));
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(static_cast<int>(i % 5) - 2);
  return g;
}

call_results run_case(const call_case& c, isa which, int max_threads) {
  execution how = c.opts.execution;
  how.isa = which;
  how.max_threads = max_threads;
  return run_case(c, how);
}

call_results run_case(const call_case& c, const execution& how) {
  options opts = c.opts;
  opts.execution = how;
  const bags batch = c.batch();
  call_results r;

  std::vector<float> table = c.table;
  r.out = canary_buffer(c.out_rows(), c.out_stride);
  if (opts.mode == mode::max) r.argmax.assign(static_cast<std::size_t>(c.out_rows() * c.dim), -7);
  forward(table_view<float>{table.data(), c.rows, c.dim, c.row_stride}, batch, opts,
          {r.out.data(), c.out_rows(), c.dim, c.out_stride}, r.argmax);
  r.table_after = table;
  if (opts.mode == mode::max && !(opts.max_norm && opts.max_norm_mode == max_norm_flavour::in_place)) {
    r.out_without_argmax = canary_buffer(c.out_rows(), c.out_stride);  // a separate path in the kernels
    forward(table_view<const float>{table.data(), c.rows, c.dim, c.row_stride}, batch, opts,
            {r.out_without_argmax.data(), c.out_rows(), c.dim, c.out_stride});
  }

  // Backward sees the table as forward left it; max_norm does not enter the gradient (as in torch).
  r.grad_output = grad_output_for(c);
  const matrix_view<const float> dy{r.grad_output.data(), c.out_rows(), c.dim, c.dim};
  r.dense_grad = grad_start_for(c);
  backward_dense(batch, opts, dy, {r.dense_grad.data(), c.rows, c.dim, c.dim}, r.argmax);
  backward_sparse(c.rows, batch, opts, dy, r.sparse, r.argmax);

  if (!c.weights.empty()) {
    r.weights_grad.assign(c.weights.size(), -1.0f);
    per_sample_weights_grad(table_view<const float>{table.data(), c.rows, c.dim, c.row_stride}, batch, opts, dy,
                            r.weights_grad);
  }
  return r;
}

}  // namespace embag::test
