#include "workload.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <utility>

namespace embag::bench {

std::string workload_spec::name() const {
  return "R:" + std::to_string(rows) + "/D:" + std::to_string(dim) + "/L:" + std::to_string(pooling) +
         (variable_length ? "/var" : "") + "/" + (dist == distribution::uniform ? "uniform" : "zipf");
}

namespace {

// Draws rows by rank from Zipf(s) over R ranks, the hot ranks scattered over the table by a
// multiplicative bijection so they do not share pages.
class zipf_rows {
 public:
  zipf_rows(std::int64_t rows, double s) : rows_(rows), cdf_(static_cast<std::size_t>(rows)) {
    double total = 0.0;
    for (std::int64_t k = 0; k < rows; ++k) cdf_[k] = total += std::pow(double(k + 1), -s);
    for (double& c : cdf_) c /= total;
    scatter_ = 2654435761 % rows;
    while (std::gcd(scatter_, rows) != 1) ++scatter_;
  }
  std::int64_t operator()(std::mt19937_64& rng) const {
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    const auto rank = std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin();
    return static_cast<std::int64_t>((static_cast<unsigned __int128>(std::min<std::int64_t>(rank, rows_ - 1)) *
                                      scatter_) % rows_);
  }

 private:
  std::int64_t rows_;
  std::vector<double> cdf_;
  std::int64_t scatter_;
};

}  // namespace

workload::workload(const workload_spec& s) : spec(s), rows_table(s.rows, s.dim) {
  std::mt19937_64 rng(s.seed);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  for (std::int64_t r = 0; r < s.rows; ++r) {
    float* row = rows_table.row(r);
    for (std::int64_t d = 0; d < s.dim; ++d) row[d] = value(rng);
  }
  std::uniform_int_distribution<std::int64_t> uniform_row(0, s.rows - 1);
  std::uniform_int_distribution<std::int64_t> length(1, 2 * s.pooling - 1);
  std::optional<zipf_rows> zipf;
  if (s.dist == distribution::zipf) zipf.emplace(s.rows, s.zipf_exponent);
  for (int k = 0; k < s.index_sets; ++k) {
    index_set set;
    for (std::int64_t b = 0; b < s.bags; ++b) {
      set.offsets.push_back(static_cast<std::int64_t>(set.indices.size()));
      const std::int64_t n = s.variable_length ? length(rng) : s.pooling;
      for (std::int64_t j = 0; j < n; ++j) set.indices.push_back(zipf ? (*zipf)(rng) : uniform_row(rng));
    }
    std::uniform_real_distribution<float> weight(1.0f, 2.0f);
    for (std::size_t j = 0; j < set.indices.size(); ++j) set.weights.push_back(weight(rng));
    sets.push_back(std::move(set));
  }
}

void workload::add(dtype type) {
  if (type == dtype::f32) return;
  for (const compressed_table& t : compressed_)
    if (t.element_type() == type) return;
  compressed_.push_back(quantize(std::as_const(rows_table).view(), type));
}

compressed_table_view workload::table_in(dtype type) const {
  if (type == dtype::f32)
    return {reinterpret_cast<const std::byte*>(rows_table.row(0)), rows_table.rows(), rows_table.dim(),
            rows_table.row_stride() * 4, dtype::f32};
  for (const compressed_table& t : compressed_)
    if (t.element_type() == type) return t.view();
  throw error(errc::invalid_option, "workload: no " + std::string(to_string(type)) + " table (add it first)");
}

bags workload::batch(int set, bool weighted) const {
  const index_set& s = sets[set];
  return bags::from_offsets(s.indices, s.offsets, weighted ? std::span<const float>(s.weights) : std::span<const float>());
}

const char* operation_name(operation op) {
  switch (op) {
    case operation::forward_sum: return "forward/sum";
    case operation::forward_mean: return "forward/mean";
    case operation::forward_max: return "forward/max";
    case operation::forward_weighted_sum: return "forward/weighted_sum";
    case operation::forward_lookup: return "forward/lookup";
    case operation::backward_dense: return "backward/dense";
    case operation::backward_sparse: return "backward/sparse";
  }
  return "?";
}

bool is_forward(operation op) { return op != operation::backward_dense && op != operation::backward_sparse; }

void run_operation(operation op, const workload& w, int set, const execution& how, call_buffers& buffers,
                   dtype type) {
  options opts;
  opts.execution = how;
  const std::int64_t dim = w.spec.dim;
  const bool weighted = op == operation::forward_weighted_sum;
  opts.mode = op == operation::forward_mean     ? mode::mean
              : op == operation::forward_max    ? mode::max
              : op == operation::forward_lookup ? mode::none
                                                : mode::sum;
  const bags batch = w.batch(set, weighted);
  const std::int64_t rows_out = output_rows(batch, opts);
  if (is_forward(op)) {
    if (buffers.out.size() < static_cast<std::size_t>(rows_out * dim)) buffers.out.resize(rows_out * dim);
    forward(w.table_in(type), batch, opts, {buffers.out.data(), rows_out, dim, dim});
    return;
  }
  if (type != dtype::f32)
    throw error(errc::invalid_option, std::string(operation_name(op)) + " reads no table: it runs on f32 only");
  if (buffers.grad_output.size() < static_cast<std::size_t>(rows_out * dim)) buffers.grad_output.assign(rows_out * dim, 0.5f);
  const matrix_view<const float> dy{buffers.grad_output.data(), rows_out, dim, dim};
  if (op == operation::backward_dense) {
    if (!buffers.dense_grad) buffers.dense_grad.emplace(w.spec.rows, dim);
    table& g = *buffers.dense_grad;
    backward_dense(batch, opts, dy, {g.row(0), g.rows(), g.dim(), g.row_stride()}, {}, &buffers.scratch);
  } else {
    backward_sparse(w.spec.rows, batch, opts, dy, buffers.sparse, {}, &buffers.scratch);
  }
}

execution execution_for(isa which, int threads, prefetch_setting prefetch) {
  execution e;
  e.isa = which;
  e.max_threads = threads;
  e.prefetch = prefetch;
  return e;
}

std::string prefetch_name(prefetch_setting p) {
  if (p.level == prefetch_level::none) return "none";
  if (p.level == prefetch_level::automatic) return "automatic";
  const char* level = p.level == prefetch_level::l1 ? "l1:" : p.level == prefetch_level::l2 ? "l2:" : "l2-one-pass:";
  return level + std::to_string(p.rows);
}

std::string benchmark_name(const char* family, isa which, dtype type, const workload_spec& spec, int threads) {
  return std::string(family) + "/" + std::string(to_string(which)) + "/" + std::string(to_string(type)) + "/" +
         spec.name() + "/threads:" + std::to_string(threads);
}

double row_bytes(const workload& w, int set, dtype type) {
  return double(w.lookups(set)) * double(embag::row_bytes(type, w.spec.dim));
}

roofline_runs::roofline_runs(const workload& w, dtype type, const execution& how)
    : out_(static_cast<std::size_t>(w.spec.bags * w.spec.dim)) {
  for (int set = 0; set < static_cast<int>(w.sets.size()); ++set)
    per_set_.emplace_back(w.table_in(type), w.batch(set), matrix_view<float>{out_.data(), w.spec.bags, w.spec.dim, 0},
                          how);
}

std::span<const prefetch_setting> roofline_prefetch_sweep() {
  // Every distance forward's prefetch candidates take (plan.cpp: 4 and 8 KiB of rows into L1, 32
  // KiB into L2; 64 rows into L1 is 8 KiB of 128-byte rows) and those between: a ceiling that
  // lacked one of forward's own settings could be beaten by forward.
  static const prefetch_setting sweep[] = {
      {prefetch_level::none, 0},        {prefetch_level::l1, 4},           {prefetch_level::l1, 8},
      {prefetch_level::l1, 12},         {prefetch_level::l1, 16},          {prefetch_level::l1, 24},
      {prefetch_level::l1, 32},         {prefetch_level::l1, 48},          {prefetch_level::l1, 64},
      {prefetch_level::l2, 8},          {prefetch_level::l2, 16},          {prefetch_level::l2, 32},
      {prefetch_level::l2, 64},         {prefetch_level::l2_one_pass, 8},  {prefetch_level::l2_one_pass, 16},
      {prefetch_level::l2_one_pass, 32}, {prefetch_level::l2_one_pass, 64}};
  return sweep;
}

prefetch_setting best_roofline_prefetch(const workload& w, int threads, isa which, dtype type) {
  prefetch_setting best{prefetch_level::none, 0};
  double best_seconds = 1e30;
  for (const prefetch_setting& p : roofline_prefetch_sweep()) {
    const roofline_runs roofline(w, type, execution_for(which, threads, p));
    int set = 0;
    const double s = median_seconds(9, [&] {
      roofline.run(set);
      set = (set + 1) % static_cast<int>(w.sets.size());
    });
    if (s < best_seconds) {
      best_seconds = s;
      best = p;
    }
  }
  return best;
}

sequential_roofline::sequential_roofline(const workload& w, int threads, isa which)
    : rows_(static_cast<std::size_t>(w.spec.rows)) {
  constexpr std::int64_t per_bag = 64;
  std::iota(rows_.begin(), rows_.end(), 0);
  for (std::int64_t first = 0; first < w.spec.rows; first += per_bag) offsets_.push_back(first);
  const auto bags_count = static_cast<std::int64_t>(offsets_.size());
  out_.resize(static_cast<std::size_t>(bags_count * w.spec.dim));
  gather_.emplace(w.rows_table.view(), bags::from_offsets(rows_, offsets_), matrix_view<float>{out_.data(), bags_count, w.spec.dim, 0},
                  execution_for(which, threads, {prefetch_level::none, 0}));
}

double sequential_read_bytes_per_second(const workload& w, int threads, isa which) {
  const sequential_roofline read_all(w, threads, which);
  const double s = median_seconds(3, [&] { read_all.run(); });
  return double(w.spec.rows) * double(w.rows_table.row_stride()) * 4.0 / s;
}

std::string size_class(std::int64_t table_bytes) {
  const std::int64_t l2 = caches().l2, llc = caches().llc;
  if (l2 > 0 && table_bytes < l2) return "cache";
  if (llc > 0 && table_bytes <= llc) return "LLC";
  if (llc > 0 && table_bytes < 4 * llc) return "LLC-DRAM";
  return "DRAM";
}

}  // namespace embag::bench
