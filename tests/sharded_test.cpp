// Sharded calls (embag/sharded.hpp) over MPI, run by meson under mpirun on 2 and 4 ranks: each
// rank draws the same whole table and every rank's batch from the case's seed, makes its sharded
// call, and compares it bit for bit with the single-node call on the whole table (forward: its own
// batch; backward and update: every rank's batch concatenated in rank order).
#include <mpi.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "embag/mpi.hpp"
#include "embag/optim.hpp"
#include "embag/quantize.hpp"
#include "embag/sharded.hpp"

namespace {

using namespace embag;

int ranks() { int n = 0; MPI_Comm_size(MPI_COMM_WORLD, &n); return n; }
int my_rank() { int r = 0; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }

// Cases per test: EMBAG_TEST_CASES, as the other suites read it (fewer under the sanitizers).
int cases(int fallback) {
  const char* n = std::getenv("EMBAG_TEST_CASES");
  return n != nullptr ? std::max(1, std::atoi(n) / 5) : fallback;
}

// Bitwise equality of two float arrays, naming the first difference.
::testing::AssertionResult same_floats(const float* expected, const float* actual, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i)
    if (std::memcmp(expected + i, actual + i, sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "float " << i << " of " << count << ": expected " << expected[i] << ", got "
                                           << actual[i];
  return ::testing::AssertionSuccess();
}

bool same_bits(const void* a, const void* b, std::size_t bytes) { return bytes == 0 || std::memcmp(a, b, bytes) == 0; }

// One rank's bags, as plain arrays, and how a call presents them.
struct batch_data {
  std::vector<std::int64_t> indices, lengths;
  std::vector<float> weights;
  bag_layout layout = bag_layout::offsets;
  index_type type = index_type::i64;
  bool include_last_offset = false;
  std::int64_t fixed_length = 1;  // bag_layout::fixed_length: every bag's
  // what the call reads
  std::vector<std::int64_t> indices64, bounds64;
  std::vector<std::int32_t> indices32, bounds32;

  std::int64_t bags_count() const { return static_cast<std::int64_t>(lengths.size()); }
  bags view() {
    std::vector<std::int64_t> bounds;
    if (layout == bag_layout::lengths) {
      bounds = lengths;
    } else if (layout == bag_layout::offsets) {
      std::int64_t at = 0;
      for (std::int64_t l : lengths) { bounds.push_back(at); at += l; }
      if (include_last_offset) bounds.push_back(at);
    }
    indices64 = indices;
    bounds64 = bounds;
    indices32.assign(indices.begin(), indices.end());
    bounds32.assign(bounds.begin(), bounds.end());
    const index_span idx = type == index_type::i32 ? index_span(indices32) : index_span(indices64);
    const index_span bnd = type == index_type::i32 ? index_span(bounds32) : index_span(bounds64);
    const std::span<const float> w(weights);
    if (layout == bag_layout::fixed_length) return bags::fixed(idx, fixed_length, w);
    return {idx, bnd, layout, 0, w};
  }
};

// The whole call of one case: table, partition, options and every rank's batch.
struct sharded_case {
  std::uint64_t seed = 0;
  std::int64_t rows = 0, dim = 0;
  dtype type = dtype::f32;
  std::vector<float> table;  // rows x dim fp32, before quantisation
  std::vector<std::int64_t> counts;  // rows per rank
  options opts;
  std::vector<batch_data> batches;  // per rank

  std::string describe() const {
    std::string s = "seed " + std::to_string(seed) + ": rows " + std::to_string(rows) + " dim " + std::to_string(dim) +
                    " dtype " + std::string(to_string(type)) + " mode " + std::string(to_string(opts.mode)) + " counts";
    for (std::int64_t c : counts) s += " " + std::to_string(c);
    s += opts.padding_idx ? " padding " + std::to_string(*opts.padding_idx) : "";
    s += opts.max_norm ? " max_norm" : "";
    s += opts.bad_indices == bad_index_policy::skip ? " skip" : "";
    s += opts.scale_grad_by_freq ? " by_freq" : "";
    s += batches[0].weights.empty() ? "" : " weighted";
    return s;
  }
};

// Index policies (skip) and max_norm only where `forward_only` allows them: backward's
// concatenated reference reads the same indices, so both are fine there too, except max_norm.
sharded_case draw(std::uint64_t seed, bool forward_only, std::vector<dtype> types) {
  std::mt19937_64 rng(seed);
  const auto pick = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
  const auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  sharded_case c;
  c.seed = seed;
  c.rows = pick(1, 300);
  const std::int64_t dims[] = {1, 3, 7, 16, 32, 33, 64, 128};
  c.dim = dims[pick(0, 7)];
  c.type = types[static_cast<std::size_t>(pick(0, static_cast<std::int64_t>(types.size()) - 1))];
  std::normal_distribution<float> normal(0.0f, 1.0f);
  c.table.resize(static_cast<std::size_t>(c.rows * c.dim));
  for (float& x : c.table) x = normal(rng);
  // even, or uneven with ranks that may own nothing
  const int n = ranks();
  if (chance(0.5)) {
    const sharded::row_partition even = sharded::row_partition::even(c.rows, n);
    for (int r = 0; r < n; ++r) c.counts.push_back(even.count(r));
  } else {
    std::vector<std::int64_t> cuts{0, c.rows};
    for (int r = 1; r < n; ++r) cuts.push_back(pick(0, c.rows));
    std::sort(cuts.begin(), cuts.end());
    for (int r = 0; r < n; ++r) c.counts.push_back(cuts[r + 1] - cuts[r]);
  }
  c.opts.mode = all_modes[pick(0, std::size(all_modes) - 1)];
  if (chance(0.3)) c.opts.padding_idx = pick(-c.rows, c.rows - 1);
  const bool weighted = (c.opts.mode == mode::sum || c.opts.mode == mode::mean || c.opts.mode == mode::sqrtn) && chance(0.5);
  if (forward_only && c.type == dtype::f32 && c.opts.mode != mode::max && chance(0.25)) c.opts.max_norm = 1.5f;
  if (chance(0.2)) c.opts.bad_indices = bad_index_policy::skip;
  c.opts.scale_grad_by_freq = !forward_only && chance(0.3);
  c.opts.execution.max_threads = static_cast<int>(pick(0, 2));
  const bag_layout layout = static_cast<bag_layout>(pick(0, 2));
  const index_type type = chance(0.5) ? index_type::i32 : index_type::i64;
  const bool include_last = layout == bag_layout::offsets && chance(0.5);
  const std::int64_t fixed = pick(1, 6);
  for (int r = 0; r < n; ++r) {
    batch_data b;
    b.layout = layout;
    b.type = type;
    b.include_last_offset = include_last;
    b.fixed_length = fixed;
    const std::int64_t bags_count = pick(0, 12);
    for (std::int64_t k = 0; k < bags_count; ++k) {
      const std::int64_t len = layout == bag_layout::fixed_length ? fixed : pick(0, 9);
      b.lengths.push_back(len);
      for (std::int64_t j = 0; j < len; ++j) {
        std::int64_t index = pick(0, c.rows - 1);
        if (c.opts.padding_idx && chance(0.15)) index = *c.opts.padding_idx < 0 ? c.rows + *c.opts.padding_idx : *c.opts.padding_idx;
        if (c.opts.bad_indices == bad_index_policy::skip && chance(0.1)) index = chance(0.5) ? -3 : c.rows + 5;
        b.indices.push_back(index);
        if (weighted) b.weights.push_back(std::uniform_real_distribution<float>(-1.0f, 2.0f)(rng));
      }
    }
    c.batches.push_back(std::move(b));
  }
  // a forward's batch is its rank's own: one rank may bring no weights while the others do
  if (forward_only && weighted && chance(0.3)) c.batches[static_cast<std::size_t>(pick(0, n - 1))].weights.clear();
  c.opts.include_last_offset = include_last;
  return c;
}

// The case's table in its dtype, and the shard of this rank.
struct tables {
  compressed_table whole;
  sharded::sharding sharding;
  compressed_table_view shard;
};

std::unique_ptr<sharded::communicator>& comm() {
  static std::unique_ptr<sharded::communicator> c = sharded::mpi_communicator(MPI_COMM_WORLD);
  return c;
}

// The MPI communicator through the interface's pure functions only: the sharded calls then take
// communicator::all_to_all_known's default (all_to_all, then a copy), as a communicator of the
// caller's that knows nothing of it would.
class pure_communicator final : public sharded::communicator {
 public:
  int rank() const noexcept override { return comm()->rank(); }
  int size() const noexcept override { return comm()->size(); }
  void all_to_all(std::span<const std::byte> send, std::span<const std::int64_t> bytes_to, std::vector<std::byte>& received,
                  std::vector<std::int64_t>& bytes_from) override {
    comm()->all_to_all(send, bytes_to, received, bytes_from);
  }
  void all_min(std::span<std::int64_t> values) override { comm()->all_min(values); }
  void broadcast(std::vector<std::byte>& bytes, int root) override { comm()->broadcast(bytes, root); }
};

sharded::communicator& pure() {
  static pure_communicator p;
  return p;
}

tables make_tables(const sharded_case& c, sharded::communicator& through = *comm()) {
  tables t{quantize(table_view<const float>{c.table.data(), c.rows, c.dim, 0}, c.type), {}, {}};
  t.sharding = {&through, sharded::row_partition::from_counts(c.counts)};
  // what the ranks of a model split into files learn from their own file's rows
  EXPECT_TRUE(std::ranges::equal(t.sharding.partition.boundaries(),
                                 sharded::partition_of_shards(*comm(), c.counts[static_cast<std::size_t>(my_rank())]).boundaries()));
  const compressed_table_view w = t.whole.view();
  const std::int64_t stride = w.row_stride == 0 ? row_bytes(c.type, c.dim) : w.row_stride;
  const std::int64_t first = t.sharding.partition.first(my_rank());
  t.shard = {w.data + first * stride, t.sharding.partition.count(my_rank()), c.dim, stride, c.type};
  return t;
}

std::int64_t out_rows(const sharded_case& c, const batch_data& b) {
  return c.opts.mode == mode::none ? static_cast<std::int64_t>(b.indices.size()) : b.bags_count();
}

TEST(Sharded, ForwardIsTheSingleNodeCallBitForBit) {
  for (int k = 0; k < cases(200); ++k) {
    sharded_case c = draw(1000 + static_cast<std::uint64_t>(k), true,
                          {dtype::f32, dtype::f16, dtype::bf16, dtype::int8_rowwise, dtype::int4_rowwise});
    SCOPED_TRACE(c.describe() + (k % 3 == 2 ? " (the default all_to_all_known)" : ""));
    tables t = make_tables(c, k % 3 == 2 ? pure() : *comm());
    batch_data& mine = c.batches[static_cast<std::size_t>(my_rank())];
    const std::int64_t n = out_rows(c, mine);
    const bool max = c.opts.mode == mode::max;
    std::vector<float> expected(static_cast<std::size_t>(n * c.dim), -7.0f), actual(expected);
    std::vector<std::int64_t> expected_argmax(max ? expected.size() : 0, -9), actual_argmax(expected_argmax);
    index_report expected_report, actual_report;
    options opts = c.opts;
    opts.report = &expected_report;
    EXPECT_NO_THROW(forward(t.whole.view(), mine.view(), opts, matrix_view<float>{expected.data(), n, c.dim, 0}, expected_argmax));
    opts.report = &actual_report;
    EXPECT_NO_THROW(sharded::forward(t.sharding, t.shard, mine.view(), opts, matrix_view<float>{actual.data(), n, c.dim, 0},
                                     actual_argmax));
    EXPECT_TRUE(same_floats(expected.data(), actual.data(), expected.size()));
    EXPECT_EQ(expected_argmax, actual_argmax);
    EXPECT_EQ(expected_report.skipped, actual_report.skipped);
    EXPECT_EQ(expected_report.first_position, actual_report.first_position);

    // partial sums: the same values within the rounding of a sum added in another order (bitwise
    // for max and none, which exchange rows); the bound is n_terms * 2^-23 * sum |w x| per element
    std::vector<float> partial(expected.size(), -7.0f), magnitude(expected.size());
    EXPECT_NO_THROW(sharded::forward(t.sharding, t.shard, mine.view(), opts, matrix_view<float>{partial.data(), n, c.dim, 0},
                                     actual_argmax, sharded::forward_exchange::partial_sums));
    if (c.opts.mode == mode::max || c.opts.mode == mode::none) {
      EXPECT_TRUE(same_floats(expected.data(), partial.data(), expected.size()));
      continue;
    }
    batch_data absolute = mine;
    for (float& w : absolute.weights) w = std::fabs(w);
    std::vector<float> table_abs(c.table.size());
    std::vector<float> dequantized(c.table.size());
    dequantize(t.whole.view(), table_view<float>{dequantized.data(), c.rows, c.dim, 0});
    for (std::size_t i = 0; i < table_abs.size(); ++i) table_abs[i] = std::fabs(dequantized[i]);
    options sum_opts = opts;
    sum_opts.mode = mode::sum;
    sum_opts.max_norm.reset();  // clipping only shrinks rows
    forward(table_view<const float>{table_abs.data(), c.rows, c.dim, 0}, absolute.view(), sum_opts,
            matrix_view<float>{magnitude.data(), n, c.dim, 0});
    for (std::size_t i = 0; i < expected.size(); ++i) {
      const float bound = 10.0f * 0x1p-23f * magnitude[i];
      if (!std::isfinite(expected[i]) || std::fabs(expected[i]) > 1e30f) continue;
      if (c.opts.mode == mode::sum) {
        EXPECT_LE(std::fabs(partial[i] - expected[i]), bound) << "element " << i;
      } else {  // divided by a divisor that may be small (weights summing near 0): relative
        EXPECT_LE(std::fabs(partial[i] - expected[i]), 1e-4f * (1.0f + std::fabs(expected[i]))) << "element " << i;
      }
    }
  }
}

// Every rank's batch as one: bags back to back in rank order, dY (and argmax) stacked.
struct concatenated {
  batch_data batch;
  std::vector<float> dy;
  std::vector<std::int64_t> argmax;
};

// dY and (max) argmax of every rank, drawn and computed the same on every rank.
struct gradients {
  std::vector<std::vector<float>> dy;
  std::vector<std::vector<std::int64_t>> argmax;
};

gradients draw_gradients(sharded_case& c, const tables& t) {
  gradients g;
  std::mt19937_64 rng(c.seed * 7 + 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (batch_data& b : c.batches) {
    const std::int64_t n = out_rows(c, b);
    std::vector<float> dy(static_cast<std::size_t>(n * c.dim));
    for (float& x : dy) x = normal(rng);
    std::vector<std::int64_t> argmax;
    if (c.opts.mode == mode::max) {
      argmax.resize(dy.size());
      std::vector<float> out(dy.size());
      index_report report;
      options opts = c.opts;
      opts.report = &report;
      forward(t.whole.view(), b.view(), opts, matrix_view<float>{out.data(), n, c.dim, 0}, argmax);
    }
    g.dy.push_back(std::move(dy));
    g.argmax.push_back(std::move(argmax));
  }
  return g;
}

concatenated concatenate(const sharded_case& c, const gradients& g) {
  concatenated all;
  all.batch.layout = bag_layout::lengths;
  for (std::size_t r = 0; r < c.batches.size(); ++r) {
    const batch_data& b = c.batches[r];
    all.batch.indices.insert(all.batch.indices.end(), b.indices.begin(), b.indices.end());
    all.batch.lengths.insert(all.batch.lengths.end(), b.lengths.begin(), b.lengths.end());
    all.batch.weights.insert(all.batch.weights.end(), b.weights.begin(), b.weights.end());
    all.dy.insert(all.dy.end(), g.dy[r].begin(), g.dy[r].end());
    all.argmax.insert(all.argmax.end(), g.argmax[r].begin(), g.argmax[r].end());
  }
  return all;
}

TEST(Sharded, BackwardIsTheConcatenatedCallBitForBit) {
  for (int k = 0; k < cases(150); ++k) {
    sharded_case c = draw(5000 + static_cast<std::uint64_t>(k), false, {dtype::f32});
    SCOPED_TRACE(c.describe());
    tables t = make_tables(c);
    const gradients g = draw_gradients(c, t);
    concatenated all = concatenate(c, g);
    const int me = my_rank();
    batch_data& mine = c.batches[static_cast<std::size_t>(me)];
    const std::int64_t n = out_rows(c, mine), total = out_rows(c, all.batch);
    const std::int64_t first = t.sharding.partition.first(me), owned = t.sharding.partition.count(me);
    options whole_opts = c.opts;
    whole_opts.include_last_offset = false;  // the concatenation is given as lengths
    index_report report;
    options opts = c.opts;
    opts.report = whole_opts.report = &report;
    const matrix_view<const float> dy{g.dy[static_cast<std::size_t>(me)].data(), n, c.dim, 0};
    const matrix_view<const float> all_dy{all.dy.data(), total, c.dim, 0};

    // dense, onto a gradient that is not zero: the owned rows accumulate in the same order
    std::vector<float> expected(c.table), actual(c.table.begin() + first * c.dim, c.table.begin() + (first + owned) * c.dim);
    backward_dense(all.batch.view(), whole_opts, all_dy, matrix_view<float>{expected.data(), c.rows, c.dim, 0}, all.argmax);
    EXPECT_NO_THROW(sharded::backward_dense(t.sharding, mine.view(), opts, dy, matrix_view<float>{actual.data(), owned, c.dim, 0},
                                            g.argmax[static_cast<std::size_t>(me)]));
    EXPECT_TRUE(same_floats(expected.data() + first * c.dim, actual.data(), actual.size()));

    sparse_gradient whole, shard;
    backward_sparse(c.rows, all.batch.view(), whole_opts, all_dy, whole, all.argmax);
    EXPECT_NO_THROW(sharded::backward_sparse(t.sharding, mine.view(), opts, dy, shard, g.argmax[static_cast<std::size_t>(me)]));
    std::vector<std::int64_t> expected_rows;
    std::vector<float> expected_values;
    for (std::size_t u = 0; u < whole.rows.size(); ++u) {
      if (whole.rows[u] < first || whole.rows[u] >= first + owned) continue;
      expected_rows.push_back(whole.rows[u] - first);
      expected_values.insert(expected_values.end(), whole.values.begin() + static_cast<std::ptrdiff_t>(u * c.dim),
                             whole.values.begin() + static_cast<std::ptrdiff_t>((u + 1) * c.dim));
    }
    EXPECT_EQ(expected_rows, shard.rows);
    EXPECT_EQ(expected_values.size(), shard.values.size());
    if (expected_values.size() == shard.values.size()) {
      EXPECT_TRUE(same_floats(expected_values.data(), shard.values.data(), shard.values.size()));
    }
  }
}

TEST(Sharded, UpdateIsTheConcatenatedStepBitForBit) {
  for (int k = 0; k < cases(120); ++k) {
    sharded_case c = draw(9000 + static_cast<std::uint64_t>(k), false, {dtype::f32, dtype::f16, dtype::bf16});
    tables t = make_tables(c);
    const gradients g = draw_gradients(c, t);
    concatenated all = concatenate(c, g);
    optimizer opt;
    opt.kind = all_optimizers[k % 3];
    opt.learning_rate = 0.05f;
    opt.weight_decay = k % 2 == 0 ? 0.0f : 0.01f;
    if (k % 4 == 1) {  // f32 tables store as they are: only f16 and bf16 round
      opt.rounding = rounding_mode::stochastic;
      opt.seed = static_cast<std::uint64_t>(k);
    }
    SCOPED_TRACE(c.describe() + " optimizer " + std::string(to_string(opt.kind)) +
                 (opt.rounding == rounding_mode::stochastic ? " stochastic" : ""));
    const int me = my_rank();
    batch_data& mine = c.batches[static_cast<std::size_t>(me)];
    const std::int64_t n = out_rows(c, mine), total = out_rows(c, all.batch);
    const std::int64_t first = t.sharding.partition.first(me), owned = t.sharding.partition.count(me);
    options whole_opts = c.opts;
    whole_opts.include_last_offset = false;
    index_report report;
    options opts = c.opts;
    opts.report = whole_opts.report = &report;

    // the table as trainable bytes (f32, f16 or bf16 rows, packed), the whole and this rank's rows
    const std::int64_t row = row_bytes(c.type, c.dim);
    std::vector<float> whole_rows((static_cast<std::size_t>(c.rows * row) + 3) / 4), shard_rows(whole_rows.size());
    std::memcpy(whole_rows.data(), t.whole.view().data, static_cast<std::size_t>(c.rows * row));
    std::memcpy(shard_rows.data(), reinterpret_cast<std::byte*>(whole_rows.data()) + first * row, static_cast<std::size_t>(owned * row));
    const std::int64_t state_cols = opt.kind == optimizer_kind::adagrad ? c.dim : 1;
    std::vector<float> whole_state(static_cast<std::size_t>(c.rows * state_cols), 0.1f);
    std::vector<float> shard_state(whole_state.begin() + first * state_cols, whole_state.begin() + (first + owned) * state_cols);
    const bool stateless = opt.kind == optimizer_kind::sgd;
    const optimizer_state whole_s = stateless ? optimizer_state{} : optimizer_state{whole_state.data(), c.rows, state_cols, 0};
    const optimizer_state shard_s = stateless ? optimizer_state{} : optimizer_state{shard_state.data(), owned, state_cols, 0};

    const update_summary expected =
        backward_update(trainable_table_view(whole_rows.data(), c.rows, c.dim, 0, c.type), all.batch.view(), whole_opts,
                        {all.dy.data(), total, c.dim, 0}, opt, whole_s, all.argmax);
    update_summary actual;
    EXPECT_NO_THROW(actual = sharded::backward_update(t.sharding, trainable_table_view(shard_rows.data(), owned, c.dim, 0, c.type),
                                                      mine.view(), opts, {g.dy[static_cast<std::size_t>(me)].data(), n, c.dim, 0},
                                                      opt, shard_s, g.argmax[static_cast<std::size_t>(me)]));
    EXPECT_TRUE(same_bits(reinterpret_cast<std::byte*>(whole_rows.data()) + first * row, shard_rows.data(),
                          static_cast<std::size_t>(owned * row)));
    if (!stateless) {
      EXPECT_TRUE(same_bits(whole_state.data() + first * state_cols, shard_state.data(), shard_state.size() * sizeof(float)));
    }
    // the whole call's summary counts every rank's rows: the shards' sum is it
    std::int64_t updated = actual.rows_updated;
    MPI_Allreduce(MPI_IN_PLACE, &updated, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    EXPECT_EQ(expected.rows_updated, updated);
  }
}

// all_to_all_known, MPI's and the interface's default: rank s sends rank r (s + 1) x (r + 1) bytes
// of value 16 s + r; each rank, told the sizes, finds every block in rank order from the start of
// its buffer, and the bytes after them untouched. Told of more than its buffer holds (MPI's), or of
// other sizes than were sent (the default's), every rank refuses.
TEST(Sharded, AllToAllKnownDeliversTheToldSizesInPlace) {
  const int n = ranks(), me = my_rank();
  for (sharded::communicator* c : {comm().get(), &pure()}) {
    SCOPED_TRACE(c == comm().get() ? "MPI" : "the default");
    std::vector<std::byte> send;
    std::vector<std::int64_t> bytes_to(static_cast<std::size_t>(n)), bytes_from(static_cast<std::size_t>(n));
    std::int64_t total = 0;
    for (int r = 0; r < n; ++r) {
      bytes_to[r] = (me + 1) * (r + 1);
      send.insert(send.end(), static_cast<std::size_t>(bytes_to[r]), static_cast<std::byte>(16 * me + r));
      bytes_from[r] = (r + 1) * (me + 1);
      total += bytes_from[r];
    }
    std::vector<std::byte> into(static_cast<std::size_t>(total + 5), std::byte{0xee});
    c->all_to_all_known(send, bytes_to, bytes_from, into);
    std::size_t at = 0;
    for (int r = 0; r < n; ++r)
      for (std::int64_t i = 0; i < bytes_from[r]; ++i, ++at)
        ASSERT_EQ(into[at], static_cast<std::byte>(16 * r + me)) << "byte " << i << " from rank " << r;
    for (; at < into.size(); ++at) EXPECT_EQ(into[at], std::byte{0xee}) << "a byte past the blocks, at " << at;
    if (c == comm().get()) {  // rank 0's buffer one byte short
      const std::size_t room = me == 0 ? static_cast<std::size_t>(total - 1) : into.size();
      try {
        c->all_to_all_known(send, bytes_to, bytes_from, std::span<std::byte>(into.data(), room));
        ADD_FAILURE() << "no error";
      } catch (const error& e) {
        EXPECT_EQ(e.code(), errc::size_mismatch) << e.what();
        EXPECT_NE(std::string(e.what()).find("rank 0 was sent more bytes than its buffer holds"), std::string::npos) << e.what();
      }
    } else {  // every rank told one byte too many from rank 0
      std::vector<std::int64_t> wrong = bytes_from;
      wrong[0] += 1;
      try {
        c->all_to_all_known(send, bytes_to, wrong, into);
        ADD_FAILURE() << "no error";
      } catch (const error& e) {
        EXPECT_EQ(e.code(), errc::size_mismatch) << e.what();
      }
    }
  }
}

// owner() against a scan of the ranges, on splits of 1 to 9 ranks with empty ranks anywhere
// (repeated boundaries), every row of each: no communicator involved.
TEST(Sharded, OwnerIsTheRankWhoseRangeHoldsTheRow) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<std::int64_t> counts(1 + rng() % 9);
    for (std::int64_t& k : counts) k = rng() % 3 == 0 ? 0 : static_cast<std::int64_t>(rng() % 7);
    const sharded::row_partition p = sharded::row_partition::from_counts(counts);
    for (std::int64_t row = 0; row < p.rows(); ++row) {
      int expected = 0;
      while (row >= p.first(expected + 1)) ++expected;
      ASSERT_EQ(p.owner(row), expected) << "row " << row << " of a split into " << counts.size() << " ranks, trial " << trial;
    }
  }
}

// An uneven split where rank 0 owns nothing and every rank's indices fall in the last rank's
// rows: ranks with no rows referenced, and one with no rows at all, take part as any other.
TEST(Sharded, IdleRanksAndUnevenSplit) {
  const int n = ranks();
  sharded_case c = draw(77, false, {dtype::f32});
  c.opts = {};
  c.opts.mode = mode::mean;
  c.counts.assign(static_cast<std::size_t>(n), 0);
  for (int r = 1; r < n; ++r) c.counts[static_cast<std::size_t>(r)] = r * 3;
  c.rows = 0;
  for (std::int64_t k : c.counts) c.rows += k;
  c.table.resize(static_cast<std::size_t>(c.rows * c.dim), 0.25f);
  for (std::size_t i = 0; i < c.table.size(); ++i) c.table[i] = static_cast<float>(i % 13) * 0.1f;
  for (batch_data& b : c.batches) {
    b = {};
    b.lengths = {2, 0, 3};
    b.indices = {c.rows - 1, c.rows - 2, c.rows - 3, c.rows - 1, c.rows - 1};
  }
  SCOPED_TRACE(c.describe());
  tables t = make_tables(c);
  batch_data& mine = c.batches[static_cast<std::size_t>(my_rank())];
  std::vector<float> expected(static_cast<std::size_t>(3 * c.dim)), actual(expected.size(), -1.0f);
  forward(t.whole.view(), mine.view(), c.opts, matrix_view<float>{expected.data(), 3, c.dim, 0});
  EXPECT_NO_THROW(sharded::forward(t.sharding, t.shard, mine.view(), c.opts, matrix_view<float>{actual.data(), 3, c.dim, 0}));
  EXPECT_TRUE(same_floats(expected.data(), actual.data(), expected.size()));
  sparse_gradient grad;
  std::vector<float> dy(expected.size(), 1.0f);
  EXPECT_NO_THROW(sharded::backward_sparse(t.sharding, mine.view(), c.opts, {dy.data(), 3, c.dim, 0}, grad));
  if (my_rank() != n - 1) {
    EXPECT_TRUE(grad.rows.empty());
  } else {
    EXPECT_EQ(grad.rows, (std::vector<std::int64_t>{c.counts.back() - 3, c.counts.back() - 2, c.counts.back() - 1}));
  }
}

// One bad index on the last rank: every rank throws the same error, and no rank writes anything
// (outputs, gradients, the table and its state keep their bytes).
TEST(Sharded, BadIndexOnOneRankFailsEveryRankAlike) {
  const int n = ranks(), me = my_rank();
  sharded_case c = draw(31, false, {dtype::f32});
  c.opts = {};
  for (batch_data& b : c.batches) {
    b = {};
    b.lengths = {2, 2};
    b.indices = {0, c.rows - 1, 1 % c.rows, 0};
  }
  c.batches.back().indices[3] = c.rows;  // out of range
  tables t = make_tables(c);
  batch_data& mine = c.batches[static_cast<std::size_t>(me)];
  const std::string expected = "rank " + std::to_string(n - 1) + ": indices[3] = " + std::to_string(c.rows) +
                               " is out of range [0, " + std::to_string(c.rows) + ")";
  const auto expect_agreed_failure = [&](auto&& call) {
    try {
      call();
      ADD_FAILURE() << "no error";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::index_out_of_range);
      EXPECT_EQ(std::string(e.what()), expected);
    }
  };
  std::vector<float> out(static_cast<std::size_t>(2 * c.dim), -7.0f), before = out;
  expect_agreed_failure([&] { sharded::forward(t.sharding, t.shard, mine.view(), c.opts, {out.data(), 2, c.dim, 0}); });
  EXPECT_EQ(before, out);
  const std::int64_t owned = t.sharding.partition.count(me);
  std::vector<float> grad(static_cast<std::size_t>(owned * c.dim), 0.5f), grad_before = grad, dy(out.size(), 1.0f);
  expect_agreed_failure([&] {
    sharded::backward_dense(t.sharding, mine.view(), c.opts, {dy.data(), 2, c.dim, 0}, {grad.data(), owned, c.dim, 0});
  });
  EXPECT_EQ(grad_before, grad);
  sparse_gradient sparse;
  sparse.rows = {42};
  expect_agreed_failure([&] { sharded::backward_sparse(t.sharding, mine.view(), c.opts, {dy.data(), 2, c.dim, 0}, sparse); });
  EXPECT_EQ(sparse.rows, std::vector<std::int64_t>{42});
  const auto* shard_rows = reinterpret_cast<const float*>(t.shard.data);  // null for a rank with no rows
  std::vector<float> shard(shard_rows, shard_rows + t.shard.rows * c.dim), shard_before = shard;
  optimizer opt;
  expect_agreed_failure([&] {
    sharded::backward_update(t.sharding, table_view<float>{shard.data(), owned, c.dim, 0}, mine.view(), c.opts,
                             {dy.data(), 2, c.dim, 0}, opt);
  });
  EXPECT_EQ(shard_before, shard);
}

// This process's address space limited to its current size plus `more` bytes (RLIMIT_AS), the
// limit it had put back when the object goes.
class address_space_limit {
 public:
  explicit address_space_limit(std::int64_t more) {
    getrlimit(RLIMIT_AS, &before_);
    std::int64_t pages = 0;
    std::ifstream("/proc/self/statm") >> pages;
    rlimit limited = before_;
    limited.rlim_cur = static_cast<rlim_t>(pages * sysconf(_SC_PAGESIZE) + more);
    setrlimit(RLIMIT_AS, &limited);
  }
  address_space_limit(const address_space_limit&) = delete;
  address_space_limit& operator=(const address_space_limit&) = delete;
  ~address_space_limit() { setrlimit(RLIMIT_AS, &before_); }

 private:
  rlimit before_{};
};

// Memory running out on one rank after the ranks agreed on the call (the last rank's address space
// too small for what bucketing its indices by owner needs): every rank throws that rank's error
// before the next exchange, where the others would wait for it forever, and nothing is written.
TEST(Sharded, OutOfMemoryOnOneRankAfterAgreeingFailsEveryRank) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the sanitizers reserve address space far past any limit set here";
#endif
  const int n = ranks(), me = my_rank();
  sharded_case c = draw(37, false, {dtype::f32});
  c.opts = {};
  tables t = make_tables(c);
  batch_data mine;  // 4M indices in bags of 2: tens of MB to bucket, a few to validate
  const std::int64_t indices = std::int64_t{1} << 22;
  mine.indices.resize(static_cast<std::size_t>(indices));
  for (std::int64_t j = 0; j < indices; ++j) mine.indices[j] = j % c.rows;
  mine.lengths.assign(static_cast<std::size_t>(indices / 2), 2);
  const std::int64_t bags = indices / 2;
  const embag::bags batch = mine.view();
  std::vector<float> out(static_cast<std::size_t>(bags * c.dim), -7.0f), dy(out.size(), 1.0f);
  const std::vector<float> before = out;
  const std::string expected = "rank " + std::to_string(n - 1) + ": out of memory while bucketing the indices by owner";
  const auto expect_agreed_failure = [&](auto&& call) {
    try {
      std::optional<address_space_limit> limit;
      if (me == n - 1) limit.emplace(std::int64_t{16} << 20);
      call();
      ADD_FAILURE() << "no error";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::out_of_memory);
      EXPECT_EQ(std::string(e.what()), expected);
    }
  };
  const matrix_view<float> y{out.data(), bags, c.dim, 0};
  expect_agreed_failure([&] { sharded::forward(t.sharding, t.shard, batch, c.opts, y); });
  expect_agreed_failure([&] {
    sharded::forward(t.sharding, t.shard, batch, c.opts, y, {}, sharded::forward_exchange::partial_sums);
  });
  EXPECT_EQ(before, out);
  sparse_gradient sparse;
  sparse.rows = {42};
  expect_agreed_failure(
      [&] { sharded::backward_sparse(t.sharding, batch, c.opts, {dy.data(), bags, c.dim, 0}, sparse); });
  EXPECT_EQ(sparse.rows, std::vector<std::int64_t>{42});
}

// Ranks that describe the table differently (here its dim) all refuse the call.
TEST(Sharded, RanksThatDisagreeAllRefuse) {
  sharded_case c = draw(5, false, {dtype::f32});
  tables t = make_tables(c);
  compressed_table_view shard = t.shard;
  if (my_rank() == 0) ++shard.dim;
  batch_data none;
  std::vector<float> out;
  try {
    sharded::forward(t.sharding, shard, none.view(), {}, {out.data(), 0, shard.dim, 0});
    ADD_FAILURE() << "no error";
  } catch (const error& e) {
    EXPECT_EQ(std::string(e.what()), "the ranks disagree on the partition, dim and dtype of the table and the exchange");
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int failed = RUN_ALL_TESTS();
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  comm().reset();
  MPI_Finalize();
  return failed;
}
