// Table-batched forward (embag/batched.hpp): every table's output bit for bit its own single
// call's, on every ISA and thread count, with tables of every dtype, mode, layout and option, in
// separate outputs or side by side in one; a bad table refused by name before anything is written.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>

#include "embag/batched.hpp"
#include "embag/quantize.hpp"
#include "support/cases.hpp"
#include "validate.hpp"

namespace embag::test {
namespace {

int batches_per_isa() {
  const char* env = std::getenv("EMBAG_TEST_CASES");
  return std::max(1, (env ? std::atoi(env) : 2000) / 20);
}

execution on(isa which, int threads) {
  execution how;
  how.isa = which;
  how.max_threads = threads;
  return how;
}

// One table of a batch: a random call, its rows stored in some dtype.
struct batched_table {
  call_case c;
  std::optional<compressed_table> compressed;  // f32 tables are read in place

  compressed_table_view rows() const {
    if (compressed) return compressed->view();
    return {reinterpret_cast<const std::byte*>(c.table.data()), c.rows, c.dim, c.row_stride * 4, dtype::f32};
  }
};

// A call drawn from seed, on a table of a random dtype; max_norm (f32 only) clips, as a batch
// requires. With bags >= 0, redrawn until it has that many bags and pools them (not mode none).
batched_table draw_table(std::uint64_t seed, std::int64_t bags = -1) {
  batched_table t;
  for (std::uint64_t attempt = 0;; ++attempt) {
    t.c = fuzz::random_call(seed * 1000 + attempt, {.max_dim = 80, .max_rows = 200});
    if (bags < 0 || (t.c.num_bags() == bags && t.c.opts.mode != mode::none)) break;
  }
  const dtype type = all_dtypes[seed % std::size(all_dtypes)];
  if (type != dtype::f32) {
    t.c.opts.max_norm.reset();
    t.compressed.emplace(quantize(t.c.view(), type));
  }
  t.c.opts.max_norm_mode = max_norm_flavour::clip;
  t.c.opts.execution = {};
  return t;
}

// The table's own forward on `how`, into a canary buffer of its out_stride.
std::vector<float> single_call(const batched_table& t, const execution& how) {
  std::vector<float> out = canary_buffer(t.c.out_rows(), t.c.out_stride);
  options opts = t.c.opts;
  opts.execution = how;
  forward(t.rows(), t.c.batch(), opts, {out.data(), t.c.out_rows(), t.c.dim, t.c.out_stride});
  return out;
}

std::string describe(const std::vector<batched_table>& tables) {
  std::string s;
  for (std::size_t i = 0; i < tables.size(); ++i)
    s += "\n  tables[" + std::to_string(i) + "] " + std::string(to_string(tables[i].rows().element_type)) + " " +
         tables[i].c.describe();
  return s;
}

class Batched : public ::testing::TestWithParam<isa> {};

// Separate outputs: each table's is bitwise its single call's, gaps of its stride untouched.
TEST_P(Batched, EachTableAsItsOwnCall) {
  for (int n = 0; n < batches_per_isa(); ++n) {
    const int threads = (n % 3 == 0) ? 1 : (n % 3 == 1) ? 2 : 8;
    std::vector<batched_table> tables;
    const int count = 1 + n % 7;
    for (int t = 0; t < count; ++t) tables.push_back(draw_table(std::uint64_t(n) * 16 + std::uint64_t(t)));
    const execution how = on(GetParam(), threads);
    std::vector<std::vector<float>> outs;
    std::vector<table_lookup> lookups;
    for (const batched_table& t : tables) outs.push_back(canary_buffer(t.c.out_rows(), t.c.out_stride));
    for (std::size_t t = 0; t < tables.size(); ++t)
      lookups.push_back({tables[t].rows(), tables[t].c.batch(), tables[t].c.opts,
                         {outs[t].data(), tables[t].c.out_rows(), tables[t].c.dim, tables[t].c.out_stride}});
    forward_batched(lookups, how);
    for (std::size_t t = 0; t < tables.size(); ++t) {
      const call_case& c = tables[t].c;
      ASSERT_TRUE(same_bits(single_call(tables[t], how), outs[t], c.out_rows(), c.dim, c.out_stride))
          << "tables[" << t << "] on " << threads << " threads" << describe(tables);
    }
  }
}

// One B x sum(D) output, tables side by side (concatenate_outputs): each table's columns are its
// single call's.
TEST_P(Batched, SideBySideInOneOutput) {
  for (int n = 0; n < batches_per_isa(); ++n) {
    const int threads = (n % 2 == 0) ? 1 : 2;
    const std::int64_t bags = 1 + n % 9;
    std::vector<batched_table> tables;
    std::int64_t cols = 0;
    for (int t = 0; t < 1 + n % 6; ++t) {
      tables.push_back(draw_table(std::uint64_t(n) * 16 + std::uint64_t(t) + 7, bags));
      cols += tables.back().c.dim;
    }
    std::vector<table_lookup> lookups;
    for (const batched_table& t : tables) lookups.push_back({t.rows(), t.c.batch(), t.c.opts, {}});
    const std::int64_t stride = cols + n % 3;
    std::vector<float> out = canary_buffer(bags, stride);
    concatenate_outputs(lookups, {out.data(), bags, cols, stride});
    const execution how = on(GetParam(), threads);
    forward_batched(lookups, how);
    std::int64_t column = 0;
    for (std::size_t t = 0; t < tables.size(); ++t) {
      const call_case& c = tables[t].c;
      const std::vector<float> want = single_call(tables[t], how);
      for (std::int64_t b = 0; b < bags; ++b)
        ASSERT_EQ(std::memcmp(&want[std::size_t(b * c.out_stride)], &out[std::size_t(b * stride + column)],
                              std::size_t(c.dim) * sizeof(float)),
                  0)
            << "tables[" << t << "] bag " << b << describe(tables);
      column += c.dim;
    }
    for (std::int64_t b = 0; b < bags; ++b)
      for (std::int64_t j = cols; j < stride; ++j)
        ASSERT_EQ(out[std::size_t(b * stride + j)], canary_buffer(bags, stride)[std::size_t(b * stride + j)]);
  }
}

// One table of a batched backward: a random f32 call, forward's argmax for max, a random dY.
struct gradient_case {
  call_case c;
  std::vector<std::int64_t> argmax;
  std::vector<float> grad_output;

  table_gradient gradient() const {
    return {c.rows, c.batch(), c.opts, {grad_output.data(), c.out_rows(), c.dim, c.dim}, argmax};
  }
};

gradient_case draw_gradient(std::uint64_t seed) {
  gradient_case g{fuzz::random_call(seed, {.max_dim = 80, .max_rows = 200}), {}, {}};
  g.c.opts.execution = {};
  g.c.opts.max_norm.reset();  // forward's: changes nothing backward reads
  std::vector<float> out(static_cast<std::size_t>(std::max<std::int64_t>(g.c.out_rows() * g.c.dim, 1)));
  if (g.c.opts.mode == mode::max) {
    g.argmax.resize(static_cast<std::size_t>(g.c.out_rows() * g.c.dim));
    forward(g.c.view(), g.c.batch(), g.c.opts, {out.data(), g.c.out_rows(), g.c.dim, g.c.dim}, g.argmax);
  }
  std::mt19937 rng(static_cast<std::uint32_t>(seed));
  std::normal_distribution<float> normal;
  g.grad_output.resize(static_cast<std::size_t>(g.c.out_rows() * g.c.dim));
  for (float& v : g.grad_output) v = normal(rng);
  return g;
}

// Dense and sparse: each table's gradient bitwise its own backward's, on 1, 2 and 8 threads (the
// sparse tables transposed at once, their row kernels in one loop).
TEST_P(Batched, BackwardEachTableAsItsOwnCall) {
  for (int n = 0; n < batches_per_isa() / 2; ++n) {
    const execution how = on(GetParam(), n % 3 == 0 ? 1 : n % 3 == 1 ? 2 : 8);
    std::vector<gradient_case> cases;
    for (int t = 0; t < 1 + n % 5; ++t) cases.push_back(draw_gradient(std::uint64_t(n) * 16 + std::uint64_t(t) + 3));
    std::vector<table_gradient> tables;
    std::vector<std::vector<float>> dense;
    std::vector<matrix_view<float>> dense_views;
    for (const gradient_case& g : cases) {
      tables.push_back(g.gradient());
      dense.emplace_back(static_cast<std::size_t>(g.c.rows * g.c.dim), 0.5f);
    }
    for (std::size_t t = 0; t < cases.size(); ++t) dense_views.push_back({dense[t].data(), cases[t].c.rows, cases[t].c.dim, 0});
    std::vector<sparse_gradient> sparse(cases.size());
    backward_dense_batched(tables, dense_views, how);
    backward_sparse_batched(tables, sparse, how);
    for (std::size_t t = 0; t < cases.size(); ++t) {
      const gradient_case& g = cases[t];
      options opts = g.c.opts;
      opts.execution = how;
      std::vector<float> want(dense[t].size(), 0.5f);
      backward_dense(g.c.batch(), opts, tables[t].grad_output, {want.data(), g.c.rows, g.c.dim, 0}, g.argmax);
      ASSERT_TRUE(same_bits(want, dense[t], g.c.rows, g.c.dim, g.c.dim)) << "dense tables[" << t << "]" << g.c.describe();
      sparse_gradient one;
      backward_sparse(g.c.rows, g.c.batch(), opts, tables[t].grad_output, one, g.argmax);
      ASSERT_EQ(one.rows, sparse[t].rows) << "sparse tables[" << t << "]" << g.c.describe();
      ASSERT_TRUE(same_bits(one.values, sparse[t].values, std::ssize(one.rows), g.c.dim, g.c.dim))
          << "sparse tables[" << t << "]" << g.c.describe();
    }
  }
}

// Table 0's gradient written over table 1's dY: refused by name, nothing written.
TEST(BatchedRefusals, BackwardGradientOverAnotherTablesGradOutput) {
  const std::vector<std::int64_t> indices{0, 1}, offsets{0, 1};
  std::vector<float> dy0{1, 2, 3, 4}, dy1{5, 6, 7, 8}, grad1(6);
  const std::vector<table_gradient> tables{{2, bags::from_offsets(indices, offsets), {}, {dy0.data(), 2, 2, 0}, {}},
                                           {3, bags::from_offsets(indices, offsets), {}, {dy1.data(), 2, 2, 0}, {}}};
  const std::vector<matrix_view<float>> grads{{dy1.data(), 2, 2, 0}, {grad1.data(), 3, 2, 0}};
  try {
    backward_dense_batched(tables, grads);
    ADD_FAILURE() << "accepted a gradient over another table's dY";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::aliasing) << e.what();
    EXPECT_NE(std::string(e.what()).find("tables[0]'s grad_table overlaps tables[1]'s grad_output"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(dy1, (std::vector<float>{5, 6, 7, 8}));
  EXPECT_EQ(grad1, std::vector<float>(6));
}

// The per-sample-weights gradient of weighted tables (sum, mean, sqrtn), each bitwise its own
// per_sample_weights_grad on the same ISA, on 1, 2 and 8 threads (each value is one bag's dot
// products: no summation order depends on the threads).
TEST_P(Batched, WeightsGradEachTableAsItsOwnCall) {
  for (int n = 0; n < batches_per_isa() / 2; ++n) {
    const execution how = on(GetParam(), n % 3 == 0 ? 1 : n % 3 == 1 ? 2 : 8);
    std::vector<call_case> calls;
    std::vector<std::vector<float>> grad_outputs, grads;
    for (int t = 0; t < 1 + n % 5; ++t)
      for (std::uint64_t attempt = 0;; ++attempt) {
        call_case c = fuzz::random_call((std::uint64_t(n) * 16 + std::uint64_t(t)) * 1000 + attempt + 17,
                                        {.max_dim = 80, .max_rows = 200});
        if (c.weights.empty() || c.opts.mode == mode::max || c.opts.mode == mode::none) continue;
        c.opts.execution = {};
        c.opts.max_norm_mode = max_norm_flavour::clip;
        std::mt19937 rng{std::uint32_t(attempt)};
        std::normal_distribution<float> normal;
        grad_outputs.emplace_back(std::size_t(c.num_bags() * c.dim));
        for (float& g : grad_outputs.back()) g = normal(rng);
        grads.emplace_back(c.indices.size(), 9.0f);
        calls.push_back(std::move(c));
        break;
      }
    std::vector<table_weights_gradient> tables;
    for (std::size_t t = 0; t < calls.size(); ++t)
      tables.push_back({calls[t].view(), calls[t].batch(), calls[t].opts,
                        {grad_outputs[t].data(), calls[t].num_bags(), calls[t].dim, calls[t].dim}, grads[t]});
    per_sample_weights_grad_batched(tables, how);
    for (std::size_t t = 0; t < calls.size(); ++t) {
      options opts = calls[t].opts;
      opts.execution = how;
      std::vector<float> want(calls[t].indices.size(), 9.0f);
      per_sample_weights_grad(calls[t].view(), calls[t].batch(), opts, tables[t].grad_output, want);
      ASSERT_EQ(std::memcmp(want.data(), grads[t].data(), want.size() * sizeof(float)), 0)
          << "tables[" << t << "] on " << how.max_threads << " threads" << calls[t].describe();
    }
  }
}

TEST(BatchedRefusals, WeightsGradOverAnotherTablesWeights) {
  const std::vector<float> w{1, 2, 3, 4};
  std::vector<float> weights0{0.5f, 2.0f}, weights1{1.0f, 3.0f}, dy(4, 1.0f), grad(2);
  const std::vector<std::int64_t> indices{0, 1}, offsets{0, 1};
  const table_weights_gradient both[] = {
      {{w.data(), 2, 2, 2}, bags::from_offsets(indices, offsets, weights0), {}, {dy.data(), 2, 2, 2}, grad},
      {{w.data(), 2, 2, 2}, bags::from_offsets(indices, offsets, weights1), {}, {dy.data(), 2, 2, 2}, weights0}};
  try {
    per_sample_weights_grad_batched(both);
    ADD_FAILURE() << "accepted a gradient over another table's weights";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::aliasing) << e.what();
    EXPECT_NE(std::string(e.what()).find("tables[1]'s grad_weights overlaps tables[0]'s per_sample_weights"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(weights0, (std::vector<float>{0.5f, 2.0f}));
  EXPECT_EQ(grad, (std::vector<float>{0.0f, 0.0f}));
}

// fp32 rows rounded to f16 or bf16 by the library's scalar codec (quantize's row encoding): what a
// 16-bit output must hold, bit for bit.
std::vector<std::uint16_t> rounded(const std::vector<float>& rows, std::int64_t count, std::int64_t dim,
                                   std::int64_t stride, dtype type) {
  std::vector<float> dense;
  for (std::int64_t r = 0; r < count; ++r)
    dense.insert(dense.end(), rows.begin() + r * stride, rows.begin() + r * stride + dim);
  const compressed_table halves = quantize(table_view<const float>{dense.data(), count, dim, dim}, type);
  std::vector<std::uint16_t> bits(std::size_t(count * dim));
  for (std::int64_t r = 0; r < count; ++r)
    std::memcpy(&bits[std::size_t(r * dim)], halves.view().data + r * halves.view().row_stride, std::size_t(dim) * 2);
  return bits;
}

// f16 and bf16 outputs, separate or side by side: each table's the rounding of its f32 output,
// whatever its dtype, mode and layout, on 1, 2 and 8 threads; the stride's gaps untouched.
TEST_P(Batched, HalfOutputsAreTheRoundedF32Outputs) {
  constexpr std::uint16_t canary = 0xbeef;
  for (int n = 0; n < batches_per_isa() / 2; ++n) {
    const dtype type = n % 2 == 0 ? dtype::f16 : dtype::bf16;
    const execution how = on(GetParam(), n % 3 == 0 ? 1 : n % 3 == 1 ? 2 : 8);
    const bool side_by_side = n % 4 >= 2;
    const std::int64_t bags = 1 + n % 7;
    std::vector<batched_table> tables;
    std::int64_t cols = 0;
    for (int t = 0; t < 1 + n % 5; ++t) {
      tables.push_back(draw_table(std::uint64_t(n) * 16 + std::uint64_t(t) + 11, side_by_side ? bags : -1));
      cols += tables.back().c.dim;
    }
    std::vector<std::vector<std::uint16_t>> outs;
    std::vector<table_lookup> lookups;
    for (const batched_table& t : tables) {
      outs.emplace_back(std::size_t(std::max<std::int64_t>(1, t.c.out_rows() * t.c.out_stride)), canary);
      lookups.push_back({t.rows(), t.c.batch(), t.c.opts,
                         {outs.back().data(), t.c.out_rows(), t.c.dim, t.c.out_stride, type}});
    }
    const std::int64_t stride = cols + n % 3;
    std::vector<std::uint16_t> one(std::size_t(bags * stride), canary);
    if (side_by_side) concatenate_outputs(lookups, {one.data(), bags, cols, stride, type});
    forward_batched(lookups, how);
    std::int64_t column = 0;
    for (std::size_t t = 0; t < tables.size(); ++t) {
      const call_case& c = tables[t].c;
      const std::vector<std::uint16_t> want = rounded(single_call(tables[t], how), c.out_rows(), c.dim, c.out_stride, type);
      const std::uint16_t* got = side_by_side ? one.data() + column : outs[t].data();
      const std::int64_t got_stride = side_by_side ? stride : c.out_stride;
      for (std::int64_t r = 0; r < c.out_rows(); ++r)
        for (std::int64_t d = 0; d < got_stride; ++d) {
          const bool cell = d < c.dim;
          if (side_by_side && !cell) continue;  // the other tables' columns
          const std::uint16_t expected = cell ? want[std::size_t(r * c.dim + d)] : canary;
          ASSERT_EQ(got[r * got_stride + d], expected)
              << to_string(type) << " tables[" << t << "] row " << r << " col " << d << describe(tables);
        }
      column += c.dim;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, Batched, ::testing::ValuesIn(available_isas()),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// Three small tables side by side, the second given `bad`; the call must fail naming it and write
// nothing anywhere.
struct three_tables {
  std::vector<float> w0{1, 2, 3, 4}, w1{5, 6, 7, 8, 9, 10}, w2{11, 12};
  std::vector<std::int64_t> i0{0, 1}, i1{2, 0}, i2{0, 0}, offsets{0, 1};
  std::vector<float> out = canary_buffer(2, 5);  // 2 bags x (2 + 2 + 1)
  std::vector<table_lookup> lookups;

  three_tables() {
    lookups = {
        {{reinterpret_cast<const std::byte*>(w0.data()), 2, 2, 0, dtype::f32}, bags::from_offsets(i0, offsets), {}, {}},
        {{reinterpret_cast<const std::byte*>(w1.data()), 3, 2, 0, dtype::f32}, bags::from_offsets(i1, offsets), {}, {}},
        {{reinterpret_cast<const std::byte*>(w2.data()), 2, 1, 0, dtype::f32}, bags::from_offsets(i2, offsets), {}, {}},
    };
    concatenate_outputs(lookups, {out.data(), 2, 5, 5});
  }
  bool untouched() const { return std::memcmp(out.data(), canary_buffer(2, 5).data(), out.size() * sizeof(float)) == 0; }
};

void expect_refused(three_tables& t, errc code, const std::string& words) {
  try {
    forward_batched(t.lookups);
    ADD_FAILURE() << "accepted; wanted " << to_string(code) << " with \"" << words << "\"";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
  EXPECT_TRUE(t.untouched()) << "a refused batch wrote its outputs";
}

TEST(BatchedRefusals, GoodBatchSums) {
  three_tables t;
  forward_batched(t.lookups);
  // bag b of each table is its row i_t[b]; the rows side by side
  const float expected[] = {1, 2, 9, 10, 11, 3, 4, 5, 6, 11};
  EXPECT_EQ(std::memcmp(t.out.data(), expected, sizeof expected), 0);
}

TEST(BatchedRefusals, BadIndexNamesItsTable) {
  three_tables t;
  t.i1[1] = 3;
  expect_refused(t, errc::index_out_of_range, "tables[1]: ");
}

TEST(BatchedRefusals, PerTableExecution) {
  three_tables t;
  t.lookups[2].opts.execution.max_threads = 1;
  expect_refused(t, errc::invalid_option, "tables[2]: opts.execution is set");
}

TEST(BatchedRefusals, MaxNormInPlace) {
  three_tables t;
  t.lookups[0].opts.max_norm = 1.0f;
  t.lookups[0].opts.max_norm_mode = max_norm_flavour::in_place;
  expect_refused(t, errc::invalid_option, "tables[0]: max_norm in place");
}

TEST(BatchedRefusals, OutputsSharingCells) {
  three_tables t;
  t.lookups[2].out.data = t.out.data() + 3;  // onto table 1's second column
  expect_refused(t, errc::aliasing, "tables[1]'s out shares cells with tables[2]'s out");
}

TEST(BatchedRefusals, OutputOverAnotherTablesIndices) {
  three_tables t;
  std::vector<float> shared(8);
  t.lookups[0].out = {shared.data(), 2, 2, 2};
  t.lookups[2].batch.indices = index_span(reinterpret_cast<const std::int64_t*>(shared.data()), 2, index_type::i64);
  expect_refused(t, errc::aliasing, "tables[0]'s out overlaps tables[2]'s indices");
}

TEST(BatchedRefusals, ReportOverAnotherTablesIndices) {
  three_tables t;
  std::vector<std::int64_t> shared(8, 0);  // table 2's indices, then room for a report
  t.lookups[2].batch.indices = index_span(shared.data(), 2, index_type::i64);
  t.lookups[0].opts.report = reinterpret_cast<index_report*>(shared.data() + 1);
  expect_refused(t, errc::aliasing, "tables[0]'s report overlaps tables[2]'s indices");
}

// validate_tables_disjoint sorts and sweeps; here it must refuse exactly the calls some pair of
// ranges makes wrong: a write over a read, or two writes over each other (cell by cell for two
// matrices). Random ranges in a small buffer so that many overlap; in every other case all
// matrices have one stride, as a KeyedTensor's tables do.
TEST(BatchedDisjointness, TheSweepRefusesExactlyWhatEveryPairWould) {
  using detail::output_cells;
  using detail::table_range;
  std::mt19937_64 rng(7);
  alignas(64) static float buffer[256];
  std::int64_t one_stride = 0;  // every matrix's, when not 0 (a KeyedTensor's layout)
  const auto draw = [&](std::size_t table, bool matrix) {
    const auto below = [&](std::int64_t n) { return static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(n)); };
    if (matrix) {
      const std::int64_t stride = one_stride > 0 ? one_stride : 4 + below(8), cols = 1 + below(stride / 2),
                         rows = 1 + below(4);
      const output_cells cells{buffer + below(256 - rows * stride), rows, cols, stride, sizeof(float)};
      return table_range{table, cells.bytes("out"), cells};
    }
    const std::int64_t begin = below(256), length = below(std::min<std::int64_t>(24, 256 - begin) + 1);
    return table_range{table, {"in", buffer + begin, length * std::int64_t{sizeof(float)}}, std::nullopt};
  };
  int refused = 0, cases = 4000;
  for (int c = 0; c < cases; ++c) {
    std::vector<table_range> reads, writes;
    one_stride = c % 2 == 0 ? 12 : 0;
    const std::size_t tables = 1 + rng() % 5;
    for (std::size_t t = 0; t < tables; ++t) {
      for (std::uint64_t k = rng() % 3; k > 0; --k) reads.push_back(draw(t, false));
      for (std::uint64_t k = rng() % 3; k > 0; --k) writes.push_back(draw(t, rng() % 2 == 0));
    }
    bool wrong = false;
    for (const table_range& w : writes)
      for (const table_range& r : reads) wrong = wrong || detail::overlap(w.bytes, r.bytes);
    for (std::size_t i = 0; i < writes.size(); ++i)  // a table's own two writes no more than two tables'
      for (std::size_t j = i + 1; j < writes.size(); ++j) {
        const table_range &a = writes[i], &b = writes[j];
        if (detail::overlap(a.bytes, b.bytes))
          wrong = wrong || !a.cells || !b.cells || detail::share_a_cell(*a.cells, *b.cells);
      }
    bool threw = false;
    try {
      detail::validate_tables_disjoint(reads, writes);
    } catch (const error& e) {
      threw = true;
      EXPECT_EQ(e.code(), errc::aliasing);
    }
    ASSERT_EQ(threw, wrong) << "case " << c;
    refused += threw;
  }
  // both outcomes drawn often
  EXPECT_GT(refused, cases / 10);
  EXPECT_LT(refused, cases * 9 / 10);
}

// Rounding's edge cases, through mode none (a row copied): ties to even, fp16's subnormals and its
// overflow to infinity, signed zero, infinities and NaNs (quiet, payload's top bits), on every ISA
// and across the SIMD widths' tails (dim 19).
TEST(HalfOutputs, RoundToNearestEvenOnEveryIsa) {
  const auto bits = [](std::uint32_t b) { return std::bit_cast<float>(b); };
  const std::vector<float> row = {1.0f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 65504.0f, 65519.0f, 65520.0f, -0.0f,
                                  0x1p-24f, 0x1p-25f, 3 * 0x1p-25f, INFINITY, -INFINITY, bits(0x7fc00000u),
                                  bits(0xff812345u), 1e-8f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 3.4028235e38f, 1e-40f};
  const std::vector<std::uint16_t> f16 = {0x3c00, 0x3c00, 0x3c02, 0x7bff, 0x7bff, 0x7c00, 0x8000, 0x0001, 0x0000, 0x0002,
                                          0x7c00, 0xfc00, 0x7e00, 0xfe09, 0x0000, 0x3c04, 0x3c0c, 0x7c00, 0x0000};
  const std::vector<std::uint16_t> bf16 = {0x3f80, 0x3f80, 0x3f80, 0x4780, 0x4780, 0x4780, 0x8000, 0x3380, 0x3300, 0x33c0,
                                           0x7f80, 0xff80, 0x7fc0, 0xffc1, 0x322c, 0x3f80, 0x3f82, 0x7f80, 0x0001};
  const std::int64_t dim = std::ssize(row);
  const std::vector<std::int64_t> indices{0, 0}, offsets{0, 1};
  for (const isa which : available_isas())
    for (const dtype type : {dtype::f16, dtype::bf16}) {
      options none;
      none.mode = mode::none;
      std::vector<std::uint16_t> out(std::size_t(2 * dim), 0xbeef);
      const table_lookup one{{reinterpret_cast<const std::byte*>(row.data()), 1, dim, 0, dtype::f32},
                             bags::from_offsets(indices, offsets), none, {out.data(), 2, dim, dim, type}};
      forward_batched({&one, 1}, on(which, 1));
      const std::vector<std::uint16_t>& want = type == dtype::f16 ? f16 : bf16;
      for (std::int64_t d = 0; d < 2 * dim; ++d)
        EXPECT_EQ(out[std::size_t(d)], want[std::size_t(d % dim)])
            << to_string(which) << " " << to_string(type) << " of " << row[std::size_t(d % dim)] << " (column " << d % dim << ")";
    }
}

TEST(BatchedRefusals, HalfOutputsTheirTypeAlignmentAndWidth) {
  three_tables t;
  std::vector<std::uint16_t> halves(2 * 4097);
  t.lookups[1].out = {halves.data(), 2, 2, 2, dtype::int8_rowwise};
  expect_refused(t, errc::invalid_option, "tables[1]: out.type = int8_rowwise (3) is no output type");
  t.lookups[1].out = {reinterpret_cast<std::byte*>(halves.data()) + 1, 2, 2, 2, dtype::f16};
  expect_refused(t, errc::misaligned, "tables[1]: out is misaligned by 1 byte for its 2-byte elements");
  const std::vector<float> wide(4097, 1.0f);
  t.lookups[1] = {{reinterpret_cast<const std::byte*>(wide.data()), 1, 4097, 0, dtype::f32}, bags::from_offsets(t.i2, t.offsets),
                  {}, {halves.data(), 2, 4097, 4097, dtype::bf16}};
  expect_refused(t, errc::invalid_shape, "tables[1]: out of bf16 elements has dim 4097: 16-bit outputs take at most 4096");
}

TEST(BatchedRefusals, ConcatenationOfTheWrongWidth) {
  three_tables t;
  try {
    concatenate_outputs(t.lookups, {t.out.data(), 2, 4, 5});
    ADD_FAILURE() << "accepted 4 columns for dims 2 + 2 + 1";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::invalid_shape) << e.what();
  }
}

}  // namespace
}  // namespace embag::test
