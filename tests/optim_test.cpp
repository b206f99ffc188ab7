// Fused sparse optimizers (embag/optim.hpp) and their roofline (embag/roofline.hpp): every ISA's fused step bit for bit the reference's
// (the reference's unfused backward, then each optimizer written as its formula), and the unfused
// ISA path (backward_sparse, then apply_sparse_gradient) too; on f32, f16 and bf16 tables with
// both roundings; the same bits on 1, 2 and 8 threads; small cases computed by hand; rows that
// would not stay finite left alone and counted; bad calls refused before anything is written.
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <tbb/task_arena.h>
#include <unistd.h>

#include <algorithm>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "embag/optim.hpp"
#include "embag/quantize.hpp"
#include "embag/roofline.hpp"
#include "support/cases.hpp"

namespace embag::test {
namespace {

int cases_per_isa() {
  const char* env = std::getenv("EMBAG_TEST_CASES");
  return std::max(1, (env ? std::atoi(env) : 2000) / 10);
}

// A table an optimizer trains, and its state, owned: the bytes compared after each step.
struct trained {
  std::int64_t rows = 0, dim = 0, stride = 0;  // stride in elements
  dtype type = dtype::f32;
  std::vector<std::uint16_t> halves;  // f16 / bf16 rows
  std::vector<float> floats;          // f32 rows
  std::vector<float> state;
  std::int64_t state_cols = 0;

  trainable_table_view view() {
    void* data = type == dtype::f32 ? static_cast<void*>(floats.data()) : static_cast<void*>(halves.data());
    return {data, rows, dim, stride, type};
  }
  optimizer_state state_view() {
    if (state_cols == 0) return {};
    return {state.data(), rows, state_cols, 0};
  }
  // bitwise (NaN equal to itself); memcmp only on non-empty vectors, whose data() is not null
  static bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
  }
  bool operator==(const trained& o) const {
    return halves == o.halves && same_bits(floats, o.floats) && same_bits(state, o.state);
  }
};

// The call's table in `type`, with the state `kind` keeps (positive, as an accumulator is).
trained train_table(const call_case& c, dtype type, optimizer_kind kind, std::uint64_t seed) {
  trained t;
  t.rows = c.rows;
  t.dim = c.dim;
  t.type = type;
  if (type == dtype::f32) {
    t.stride = c.row_stride;
    t.floats = c.table;
  } else {
    t.stride = c.dim;
    const compressed_table q = quantize(c.view(), type);
    t.halves.resize(static_cast<std::size_t>(c.rows * c.dim));
    if (!t.halves.empty()) std::memcpy(t.halves.data(), q.view().data, t.halves.size() * 2);
  }
  t.state_cols = kind == optimizer_kind::adagrad ? c.dim : kind == optimizer_kind::rowwise_adagrad ? 1 : 0;
  std::mt19937 g(static_cast<std::uint32_t>(seed));
  std::uniform_real_distribution<float> positive(0.0f, 2.0f);
  t.state.resize(static_cast<std::size_t>(c.rows * t.state_cols));
  for (float& s : t.state) s = positive(g);
  return t;
}

std::vector<float> random_dy(const call_case& c, std::uint64_t seed) {
  std::mt19937 g(static_cast<std::uint32_t>(seed));
  std::normal_distribution<float> normal;
  std::vector<float> dy(static_cast<std::size_t>(c.out_rows() * c.dim));
  for (float& v : dy) v = normal(g);
  return dy;
}

// What mode max's backward needs: the argmax forward produces.
std::vector<std::int64_t> argmax_of(const call_case& c) {
  if (c.opts.mode != mode::max) return {};
  std::vector<std::int64_t> argmax(static_cast<std::size_t>(c.out_rows() * c.dim));
  std::vector<float> out(argmax.size());
  options opts = c.opts;
  opts.max_norm.reset();
  forward(c.view(), c.batch(), opts, {out.data(), c.out_rows(), c.dim, c.dim}, argmax);
  return argmax;
}

optimizer draw_optimizer(std::mt19937_64& g) {
  optimizer opt;
  opt.kind = all_optimizers[g() % 3];
  opt.learning_rate = std::uniform_real_distribution<float>(0.0f, 0.5f)(g);
  opt.eps = g() % 4 == 0 ? 0.0f : std::uniform_real_distribution<float>(1e-10f, 1e-3f)(g);
  opt.weight_decay = g() % 2 == 0 ? 0.0f : std::uniform_real_distribution<float>(0.0f, 0.1f)(g);
  opt.rounding = g() % 2 == 0 ? rounding_mode::nearest : rounding_mode::stochastic;
  opt.seed = g();
  return opt;
}

execution on(isa which, int threads) {
  execution how;
  how.isa = which;
  how.max_threads = threads;
  return how;
}

bool same_summary(const update_summary& a, const update_summary& b) {
  return a.rows_updated == b.rows_updated && a.rows_not_finite == b.rows_not_finite &&
         a.first_not_finite_row == b.first_not_finite_row;
}

class EveryIsa : public ::testing::TestWithParam<isa> {};

std::string isa_name(const ::testing::TestParamInfo<isa>& info) { return std::string(to_string(info.param)); }

TEST_P(EveryIsa, FusedAndUnfusedStepsAreTheReferencesBitForBit) {
  const isa which = GetParam();
  const dtype types[] = {dtype::f32, dtype::f16, dtype::bf16};
  for (int n = 0; n < cases_per_isa(); ++n) {
    const auto seed = static_cast<std::uint64_t>(n) + 7000;
    call_case c = fuzz::random_call(seed, {.max_dim = 80, .max_rows = 120});
    c.opts.max_norm.reset();  // a table being trained is not rescaled by its lookups here
    std::mt19937_64 g(seed);
    const optimizer opt = draw_optimizer(g);
    const dtype type = types[g() % 3];
    const std::vector<float> dy = random_dy(c, seed);
    const std::vector<std::int64_t> argmax = argmax_of(c);
    const matrix_view<const float> grad_output{dy.data(), c.out_rows(), c.dim, c.dim};
    SCOPED_TRACE(c.describe() + ", " + std::string(to_string(opt.kind)) + " on " + std::string(to_string(type)) +
                 (opt.rounding == rounding_mode::stochastic ? " (stochastic)" : "") + ", weight decay " +
                 std::to_string(opt.weight_decay));

    trained expected = train_table(c, type, opt.kind, seed);
    options opts = c.opts;
    opts.execution = on(isa::reference, 1);
    const update_summary reference_summary =
        backward_update(expected.view(), c.batch(), opts, grad_output, opt, expected.state_view(), argmax);

    trained fused = train_table(c, type, opt.kind, seed);
    opts.execution = on(which, static_cast<int>(g() % 3));
    // However the steps bring their table and state rows in (choose_update_fetch: as learnt, not
    // at all, loaded a chunk at a time, or prefetched a chunk ahead), in chunks of 1 to 5 rows or
    // the plan's.
    const prefetch_level fetch_levels[] = {prefetch_level::automatic, prefetch_level::none, prefetch_level::l1,
                                           prefetch_level::l2};
    opts.execution.prefetch = {fetch_levels[g() % 4], static_cast<int>(g() % 6)};
    const update_summary fused_summary =
        backward_update(fused.view(), c.batch(), opts, grad_output, opt, fused.state_view(), argmax);
    EXPECT_TRUE(fused == expected) << "fused on " << to_string(which) << ", prefetch level "
                                   << static_cast<int>(opts.execution.prefetch.level) << ", rows "
                                   << opts.execution.prefetch.rows;
    EXPECT_TRUE(same_summary(fused_summary, reference_summary));

    trained unfused = train_table(c, type, opt.kind, seed);
    sparse_gradient grad;
    backward_sparse(c.rows, c.batch(), opts, grad_output, grad, argmax);
    const update_summary unfused_summary =
        apply_sparse_gradient(unfused.view(), grad, opt, unfused.state_view(), opts.execution);
    EXPECT_TRUE(unfused == expected) << "backward_sparse + apply_sparse_gradient on " << to_string(which);
    EXPECT_TRUE(same_summary(unfused_summary, reference_summary));
    EXPECT_EQ(reference_summary.rows_updated + reference_summary.rows_not_finite, std::ssize(grad.rows));
    if (HasFailure()) return;
  }
}

// A larger call with skewed ids (many rows touched by many bags), on 1, 2 and 8 threads.
TEST_P(EveryIsa, TheSameBitsOnAnyThreadCount) {
  const isa which = GetParam();
  call_case c = make_case(3000, 48, {}, {});
  std::mt19937_64 g(5);
  const std::int64_t bags = 400, length = 25;
  c.indices.clear();
  c.boundaries.clear();
  for (std::int64_t b = 0; b < bags; ++b) {
    c.boundaries.push_back(std::ssize(c.indices));
    for (std::int64_t j = 0; j < length; ++j) {
      const double u = std::uniform_real_distribution<double>(0.0, 1.0)(g);
      c.indices.push_back(static_cast<std::int64_t>(std::pow(3000.0, u * u)) - 1);  // skewed to low ids
    }
  }
  c.copy_to_32_bits();
  const std::vector<float> dy = random_dy(c, 11);
  for (const optimizer_kind kind : all_optimizers) {
    for (const dtype type : {dtype::f32, dtype::bf16}) {
      optimizer opt;
      opt.kind = kind;
      opt.learning_rate = 0.05f;
      opt.weight_decay = 0.01f;
      opt.rounding = type == dtype::f32 ? rounding_mode::nearest : rounding_mode::stochastic;
      SCOPED_TRACE(std::string(to_string(kind)) + " on " + std::string(to_string(type)));
      std::vector<trained> results;
      for (const int threads : {1, 2, 8}) {
        trained t = train_table(c, type, kind, 3);
        options opts = c.opts;
        opts.execution.isa = which;
        tbb::task_arena arena(threads);
        if (threads == 8) opts.execution.arena = &arena;  // more threads than this machine may have cores
        else opts.execution.max_threads = threads;
        for (int step = 0; step < 3; ++step) {
          opt.seed = static_cast<std::uint64_t>(step);
          backward_update(t.view(), c.batch(), opts, {dy.data(), c.out_rows(), c.dim, c.dim}, opt, t.state_view());
        }
        results.push_back(std::move(t));
      }
      EXPECT_TRUE(results[1] == results[0]) << "2 threads differ from 1";
      EXPECT_TRUE(results[2] == results[0]) << "8 threads differ from 1";
    }
  }
}

// Many tables in one call: each bitwise its own single call's, on every ISA and thread count.
TEST_P(EveryIsa, ABatchedStepIsEachTablesOwnStep) {
  const isa which = GetParam();
  const dtype types[] = {dtype::f32, dtype::f16, dtype::bf16};
  for (int n = 0; n < std::max(1, cases_per_isa() / 5); ++n) {
    const std::size_t count = 1 + static_cast<std::size_t>(n % 4);
    std::vector<call_case> calls;
    std::vector<trained> single, batched;
    std::vector<std::vector<float>> dys;
    std::vector<std::vector<std::int64_t>> argmaxes;
    std::vector<table_update> updates;
    std::vector<update_summary> expected(count);
    std::mt19937_64 g(static_cast<std::uint64_t>(n) + 99);
    for (std::size_t t = 0; t < count; ++t) {
      const std::uint64_t seed = static_cast<std::uint64_t>(n) * 10 + t + 20000;
      calls.push_back(fuzz::random_call(seed, {.max_dim = 40, .max_rows = 60}));
      calls.back().opts.max_norm.reset();
      calls.back().opts.execution = {};
    }
    for (std::size_t t = 0; t < count; ++t) {  // the vectors no longer move: views into them stay valid
      const call_case& c = calls[t];
      const optimizer opt = draw_optimizer(g);
      const dtype type = types[g() % 3];
      single.push_back(train_table(c, type, opt.kind, t));
      batched.push_back(train_table(c, type, opt.kind, t));
      dys.push_back(random_dy(c, t));
      argmaxes.push_back(argmax_of(c));
      updates.push_back({{}, c.batch(), c.opts, {dys.back().data(), c.out_rows(), c.dim, c.dim}, opt, {}, argmaxes.back()});
    }
    for (std::size_t t = 0; t < count; ++t) {
      updates[t].table = batched[t].view();
      updates[t].state = batched[t].state_view();
      options opts = calls[t].opts;
      opts.execution = on(which, 1);
      expected[t] = backward_update(single[t].view(), calls[t].batch(), opts, updates[t].grad_output, updates[t].opt,
                                    single[t].state_view(), argmaxes[t]);
    }
    std::vector<update_summary> summaries(count);
    const int thread_counts[] = {1, 2, 8};  // the tables transposed at once, their rows in one loop
    backward_update_batched(updates, summaries, on(which, thread_counts[g() % 3]));
    for (std::size_t t = 0; t < count; ++t) {
      EXPECT_TRUE(batched[t] == single[t]) << "tables[" << t << "]: " << calls[t].describe();
      EXPECT_TRUE(same_summary(summaries[t], expected[t])) << "tables[" << t << "]";
    }
    if (HasFailure()) return;
  }
}

// The update's roofline rewrites the rows a step would update, table and state, and no other: each
// row on a page of its own, the other rows' pages unreadable (PROT_NONE), it runs, leaves every
// byte as it was (random bits: NaN patterns and negative zeros too), and counts the step's rows;
// with a touched row's table or state page read-only, its stores fault.
TEST_P(EveryIsa, UpdateRooflineRewritesTheStepsRowsUnchangedAndNoOthers) {
  const isa which = GetParam();
  if (which == isa::reference) GTEST_SKIP() << "the roofline needs a SIMD ISA";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::int64_t page = sysconf(_SC_PAGESIZE), rows = 9, dim = 37, batches = 3;
  std::vector<std::int64_t> indices{4, 1, 7, 4, 7, 7}, offsets{0, 2, 3};  // rows 1, 4, 7
  const std::vector<float> dy(static_cast<std::size_t>(batches * dim), 1.0f);
  const bags batch = bags::from_offsets(indices, offsets);
  const auto touched = [](std::int64_t row) { return row == 1 || row == 4 || row == 7; };
  for (const optimizer_kind kind : all_optimizers)
    for (const dtype type : {dtype::f32, dtype::f16, dtype::bf16})
      for (const prefetch_level fetch : {prefetch_level::none, prefetch_level::l1, prefetch_level::l2}) {
        SCOPED_TRACE(std::string(to_string(kind)) + " on " + std::string(to_string(type)) + ", prefetch level " +
                     std::to_string(static_cast<int>(fetch)));
        const std::int64_t bytes = 2 * rows * page;  // a page per table row, then one per state row
        auto* const pages = static_cast<std::byte*>(mmap(nullptr, static_cast<std::size_t>(bytes), PROT_READ | PROT_WRITE,
                                                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        ASSERT_NE(pages, MAP_FAILED);
        std::mt19937 g(static_cast<std::uint32_t>(static_cast<int>(kind) * 10 + static_cast<int>(type)));
        for (std::int64_t i = 0; i < bytes; ++i) pages[i] = static_cast<std::byte>(g());
        const std::vector<std::byte> before(pages, pages + bytes);
        const std::int64_t element_bytes = type == dtype::f32 ? 4 : 2;
        const trainable_table_view table{pages, rows, dim, page / element_bytes, type};
        float* const state_rows = reinterpret_cast<float*>(pages + rows * page);
        const std::int64_t state_cols = kind == optimizer_kind::adagrad ? dim : 1;
        const optimizer_state state =
            kind == optimizer_kind::sgd ? optimizer_state{} : optimizer_state{state_rows, rows, state_cols, page / 4};
        options opts;
        opts.execution.isa = which;
        opts.execution.max_threads = 1;
        opts.execution.prefetch = {fetch, 1};
        const update_roofline roofline(table, batch, opts, {dy.data(), batches, dim, 0}, {.kind = kind}, state);
        EXPECT_EQ(roofline.rows(), 3);
        const auto protect = [&](std::int64_t page_number, int how) {
          ASSERT_EQ(mprotect(pages + page_number * page, static_cast<std::size_t>(page), how), 0);
        };
        for (std::int64_t row = 0; row < rows; ++row)
          if (!touched(row)) {
            protect(row, PROT_NONE);
            protect(rows + row, PROT_NONE);
          }
        roofline.run();
        for (std::int64_t p = 0; p < 2 * rows; ++p) protect(p, PROT_READ | PROT_WRITE);
        EXPECT_TRUE(std::equal(before.begin(), before.end(), pages)) << "a byte changed";
        protect(4, PROT_READ);
        EXPECT_DEATH(roofline.run(), "") << "row 4's table row was not written";
        protect(4, PROT_READ | PROT_WRITE);
        if (kind != optimizer_kind::sgd) {
          protect(rows + 7, PROT_READ);
          EXPECT_DEATH(roofline.run(), "") << "row 7's state row was not written";
        }
        munmap(pages, static_cast<std::size_t>(bytes));
      }
}

std::vector<isa> simd_isas() {
  std::vector<isa> all = available_isas();
  all.erase(all.begin());  // the reference is the oracle
  if (all.empty()) all.push_back(isa::reference);  // a build without SIMD still runs the suite
  return all;
}

INSTANTIATE_TEST_SUITE_P(Optim, EveryIsa, ::testing::ValuesIn(simd_isas()), isa_name);

// One bag {0, 0, 2} of a 3 x 2 table, sum, dY = [1, 7]: row 0's gradient is [2, 14], row 2's
// [1, 7]; row 1 is untouched. Each step's numbers chosen to be exact.
struct hand_case {
  std::vector<float> table{10, 20, 30, 40, 50, 60};
  std::vector<std::int64_t> indices{0, 0, 2}, offsets{0};
  std::vector<float> dy{1, 7};
  update_summary step(const optimizer& opt, optimizer_state state = {}, isa which = active_isa()) {
    options opts;
    opts.execution.isa = which;
    return backward_update(table_view<float>{table.data(), 3, 2, 0}, bags::from_offsets(indices, offsets), opts,
                           {dy.data(), 1, 2, 0}, opt, state);
  }
};

TEST(OptimByHand, Sgd) {
  for (const isa which : available_isas()) {
    hand_case h;
    const update_summary s = h.step({.kind = optimizer_kind::sgd, .learning_rate = 0.5f}, {}, which);
    EXPECT_EQ(h.table, (std::vector<float>{9, 13, 30, 40, 49.5f, 56.5f})) << to_string(which);
    EXPECT_EQ(s.rows_updated, 2);
    EXPECT_EQ(s.rows_not_finite, 0);
  }
}

TEST(OptimByHand, SgdWithWeightDecayTouchesOnlyTouchedRows) {
  hand_case h;
  h.step({.kind = optimizer_kind::sgd, .learning_rate = 0.5f, .weight_decay = 0.5f});
  // row 0: g = [2, 14] + 0.5 [10, 20] = [7, 24]; row 2: [1, 7] + 0.5 [50, 60] = [26, 37]
  EXPECT_EQ(h.table, (std::vector<float>{6.5f, 8, 30, 40, 37, 41.5f}));
}

TEST(OptimByHand, Adagrad) {
  for (const isa which : available_isas()) {
    hand_case h;
    std::vector<float> state{0, 0, 5, 5, 0, 0};
    h.step({.kind = optimizer_kind::adagrad, .learning_rate = 2, .eps = 0}, {state.data(), 3, 2, 0}, which);
    // row 0: s = [4, 196], w -= 2 [2/2, 14/14]; row 2: s = [1, 49], w -= 2 [1, 1]
    EXPECT_EQ(state, (std::vector<float>{4, 196, 5, 5, 1, 49})) << to_string(which);
    EXPECT_EQ(h.table, (std::vector<float>{8, 18, 30, 40, 48, 58})) << to_string(which);
  }
}

TEST(OptimByHand, RowwiseAdagrad) {
  for (const isa which : available_isas()) {
    hand_case h;
    std::vector<float> state{0, 3, 0};
    h.step({.kind = optimizer_kind::rowwise_adagrad, .learning_rate = 10, .eps = 0}, {state.data(), 3, 1, 0}, which);
    // row 0: mean(g^2) = (4 + 196) / 2 = 100, step = 10 / 10 = 1; row 2: (1 + 49) / 2 = 25, step 2
    EXPECT_EQ(state, (std::vector<float>{100, 3, 25})) << to_string(which);
    EXPECT_EQ(h.table, (std::vector<float>{8, 6, 30, 40, 48, 46})) << to_string(which);
  }
}

// A NaN in dY reaches the rows of its bag only: they stay as they were, and are counted.
TEST(OptimNotFinite, RowsANanReachesAreLeftAndCounted) {
  for (const isa which : available_isas()) {
    std::vector<float> table(4 * 3, 1.0f), state(4 * 3, 0.5f);
    const std::vector<std::int64_t> indices{0, 1, 3, 1}, offsets{0, 2};  // bags {0, 1}, {3, 1}
    std::vector<float> dy{1, 1, 1, 2, NAN, 2};
    options opts;
    opts.execution.isa = which;
    const update_summary s =
        backward_update(table_view<float>{table.data(), 4, 3, 0}, bags::from_offsets(indices, offsets), opts,
                        {dy.data(), 2, 3, 0}, {.kind = optimizer_kind::adagrad, .learning_rate = 0.1f},
                        {state.data(), 4, 3, 0});
    EXPECT_EQ(s.rows_updated, 1) << to_string(which);  // row 0
    EXPECT_EQ(s.rows_not_finite, 2);                   // rows 1 and 3
    EXPECT_EQ(s.first_not_finite_row, 1);
    for (int d = 0; d < 3; ++d) {
      EXPECT_NE(table[d], 1.0f);
      EXPECT_NE(state[d], 0.5f);
      for (int row : {1, 2, 3}) {
        EXPECT_EQ(table[row * 3 + d], 1.0f) << "row " << row;
        EXPECT_EQ(state[row * 3 + d], 0.5f) << "row " << row;
      }
    }
  }
}

// An f16 weight the step would carry past 65504 is not rounded to Inf: its row stays.
TEST(OptimNotFinite, AnF16WeightBeyondItsRangeLeavesTheRow) {
  for (const isa which : available_isas()) {
    std::vector<std::uint16_t> table(2 * 2, 0x7bff);  // 65504, fp16's largest
    const std::vector<std::int64_t> indices{0, 1}, offsets{0, 1};
    std::vector<float> dy{0, 0, -1, 0};  // row 1's first weight would become 65504 + 64
    options opts;
    opts.execution.isa = which;
    const update_summary s =
        backward_update({table.data(), 2, 2, 0, dtype::f16}, bags::from_offsets(indices, offsets), opts,
                        {dy.data(), 2, 2, 0}, {.kind = optimizer_kind::sgd, .learning_rate = 64});
    EXPECT_EQ(s.rows_updated, 1) << to_string(which);
    EXPECT_EQ(s.rows_not_finite, 1);
    EXPECT_EQ(s.first_not_finite_row, 1);
    EXPECT_EQ(table, (std::vector<std::uint16_t>(4, 0x7bff)));
  }
}

// bf16 weights of 1 stepped by 2^-10 each, well under half their spacing: rounding to nearest
// loses every step; stochastic rounding keeps it on average, and the same seed the same bits.
TEST(OptimRounding, StochasticKeepsSmallStepsOnAverage) {
  const std::int64_t rows = 64, dim = 64;
  const auto run = [&](rounding_mode rounding, std::uint64_t seed) {
    std::vector<std::uint16_t> table(static_cast<std::size_t>(rows * dim), 0x3f80);  // 1.0
    std::vector<std::int64_t> indices(static_cast<std::size_t>(rows)), offsets(indices.size());
    for (std::int64_t r = 0; r < rows; ++r) indices[r] = offsets[r] = r;
    std::vector<float> dy(static_cast<std::size_t>(rows * dim), 0x1p-10f);
    backward_update({table.data(), rows, dim, 0, dtype::bf16}, bags::from_offsets(indices, offsets), {},
                    {dy.data(), rows, dim, 0},
                    {.kind = optimizer_kind::sgd, .learning_rate = 1, .rounding = rounding, .seed = seed});
    return table;
  };
  const std::vector<std::uint16_t> nearest = run(rounding_mode::nearest, 0);
  EXPECT_EQ(nearest, std::vector<std::uint16_t>(nearest.size(), 0x3f80));
  const std::vector<std::uint16_t> a = run(rounding_mode::stochastic, 1), b = run(rounding_mode::stochastic, 1),
                                   other = run(rounding_mode::stochastic, 2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other);
  // 1 - 2^-10 lies between 1 - 2^-8 and 1, three quarters of the way up: P(1) = 3/4
  double mean = 0;
  for (const std::uint16_t h : a) {
    ASSERT_TRUE(h == 0x3f80 || h == 0x3f7f) << h;
    mean += std::bit_cast<float>(std::uint32_t{h} << 16);
  }
  mean /= static_cast<double>(a.size());
  EXPECT_NEAR(mean, 1.0 - 0x1p-10, 0x1p-8 * 0.02);  // 4096 draws: a standard error of 0.007 spacings
}

// A batch refuses a table written by two entries, one entry's state inside another's inputs, and
// summaries over a table, by name, before any write.
TEST(OptimBatched, RefusesOverlapsAcrossTablesBeforeAnyWrite) {
  std::vector<float> w(6 * 2, 1.0f), v(6 * 2, 2.0f), state(6 * 2, 0.5f);
  const std::vector<float> w_before = w, v_before = v;
  const std::vector<std::int64_t> indices{0, 5}, offsets{0};
  std::vector<float> dy{1, 1};
  const optimizer sgd{.kind = optimizer_kind::sgd, .learning_rate = 0.5f};
  const table_update first{table_view<float>{w.data(), 6, 2, 0}, bags::from_offsets(indices, offsets), {},
                           {dy.data(), 1, 2, 0}, sgd, {}, {}};
  table_update second = first;
  second.table = table_view<float>{v.data(), 6, 2, 0};
  std::vector<update_summary> summaries(2);
  const auto expect = [&](std::vector<table_update> batch, errc code, const std::string& fragment) {
    try {
      backward_update_batched(batch, std::span(summaries.data(), batch.size()));
      ADD_FAILURE() << "no error for " << fragment;
    } catch (const error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    EXPECT_EQ(w, w_before);
    EXPECT_EQ(v, v_before);
  };
  expect({first, first}, errc::aliasing, "tables[0]'s table");
  table_update reads_a_table = second;
  reads_a_table.grad_output = {w.data(), 1, 2, 0};  // dY inside the first table
  expect({first, reads_a_table}, errc::aliasing, "grad_output");
  table_update bad = second;
  bad.opt = {.kind = optimizer_kind::adagrad};
  expect({first, bad}, errc::size_mismatch, "tables[1]: state is 0 x 0");
  try {
    backward_update_batched(std::vector<table_update>{first, second},
                            std::span(reinterpret_cast<update_summary*>(v.data()), 2));
    ADD_FAILURE() << "summaries over a table";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::aliasing) << e.what();
  }
  EXPECT_EQ(v, v_before);
}

// Table and state may be files mapped shared (a training job's tables on disk): the step lands in
// the files, the same bits as in memory.
TEST(OptimFiles, MappedTableAndStateAreUpdatedInTheirFiles) {
  const std::int64_t rows = 64, dim = 24;
  std::vector<float> w(rows * dim), state(rows * dim, 0.25f), dy(3 * dim);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 17) * 0.5f - 4.0f;
  for (std::size_t i = 0; i < dy.size(); ++i) dy[i] = static_cast<float>(i % 5) - 2.0f;
  const std::vector<std::int64_t> indices{3, 9, 9, 63, 0}, offsets{0, 2, 4};
  const optimizer adagrad{.kind = optimizer_kind::adagrad, .learning_rate = 0.1f};
  char path[] = "/tmp/embag-optim-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::size_t bytes = w.size() * 4;
  ASSERT_EQ(write(fd, w.data(), bytes), static_cast<ssize_t>(bytes));
  ASSERT_EQ(write(fd, state.data(), bytes), static_cast<ssize_t>(bytes));
  void* mapped = mmap(nullptr, 2 * bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(mapped, MAP_FAILED);
  auto* file_w = static_cast<float*>(mapped);
  backward_update(table_view<float>{file_w, rows, dim, 0}, bags::from_offsets(indices, offsets), {},
                  {dy.data(), 3, dim, 0}, adagrad, {file_w + rows * dim, rows, dim, 0});
  ASSERT_EQ(munmap(mapped, 2 * bytes), 0);
  backward_update(table_view<float>{w.data(), rows, dim, 0}, bags::from_offsets(indices, offsets), {},
                  {dy.data(), 3, dim, 0}, adagrad, {state.data(), rows, dim, 0});
  std::vector<float> from_file(2 * w.size());
  ASSERT_EQ(pread(fd, from_file.data(), 2 * bytes, 0), static_cast<ssize_t>(2 * bytes));
  close(fd);
  unlink(path);
  EXPECT_TRUE(std::equal(w.begin(), w.end(), from_file.begin()));
  EXPECT_TRUE(std::equal(state.begin(), state.end(), from_file.begin() + static_cast<std::ptrdiff_t>(w.size())));
  EXPECT_NE(w[3 * dim], static_cast<float>(3 * dim % 17) * 0.5f - 4.0f);  // the step moved row 3
}

// Every bad call throws the error it should, and writes nothing: not the table, not the state.
TEST(OptimBadInput, RefusedBeforeAnyWrite) {
  std::vector<float> table(5 * 4, 1.0f), state(5 * 4, 0.5f), rowwise(5, 0.5f);
  const std::vector<float> table_before = table, state_before = state;
  std::vector<std::int64_t> indices{0, 4, 2}, offsets{0, 1};
  std::vector<float> dy(2 * 4, 1.0f);
  const table_view<float> t{table.data(), 5, 4, 0};
  const matrix_view<const float> grad{dy.data(), 2, 4, 0};
  const optimizer adagrad{.kind = optimizer_kind::adagrad};
  const optimizer_state s{state.data(), 5, 4, 0};
  const auto expect = [&](errc code, auto call, const char* what) {
    try {
      call();
      ADD_FAILURE() << what << ": no error";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), code) << what << ": " << e.what();
    }
    EXPECT_EQ(table, table_before) << what;
    EXPECT_EQ(state, state_before) << what;
  };
  const bags batch = bags::from_offsets(indices, offsets);
  expect(errc::size_mismatch, [&] { backward_update(t, batch, {}, grad, adagrad, {state.data(), 5, 3, 0}); },
         "an adagrad state of the wrong width");
  expect(errc::size_mismatch, [&] { backward_update(t, batch, {}, grad, adagrad); }, "adagrad without a state");
  expect(errc::size_mismatch,
         [&] { backward_update(t, batch, {}, grad, {.kind = optimizer_kind::rowwise_adagrad}, s); },
         "a rowwise state of the table's shape");
  expect(errc::invalid_option, [&] { backward_update(t, batch, {}, grad, {.kind = optimizer_kind::sgd}, s); },
         "sgd given a state");
  expect(errc::invalid_option, [&] { backward_update(t, batch, {}, grad, {.learning_rate = -1}); }, "a negative lr");
  expect(errc::invalid_option, [&] { backward_update(t, batch, {}, grad, {.learning_rate = NAN}); }, "a NaN lr");
  expect(errc::invalid_option, [&] { backward_update(t, batch, {}, grad, {.kind = optimizer_kind::adagrad, .eps = INFINITY}, s); },
         "an infinite eps");
  expect(errc::invalid_option, [&] { backward_update(t, batch, {}, grad, {.weight_decay = -0.1f}); },
         "a negative weight decay");
  expect(errc::invalid_option,
         [&] { backward_update({table.data(), 5, 4, 0, dtype::int8_rowwise}, batch, {}, grad, {}); },
         "an int8 table");
  expect(errc::invalid_option, [&] { backward_update(t, batch, {}, grad, {.kind = static_cast<optimizer_kind>(9)}); },
         "no optimizer");
  std::vector<std::int64_t> bad_indices{0, 5, 2};
  expect(errc::index_out_of_range,
         [&] { backward_update(t, bags::from_offsets(bad_indices, offsets), {}, grad, adagrad, s); },
         "an index past the table");
  expect(errc::index_out_of_range,
         [&] { update_roofline(t, bags::from_offsets(bad_indices, offsets), {}, grad, adagrad, s); },
         "the roofline of a step with an index past the table");
  options on_reference;
  on_reference.execution.isa = isa::reference;
  expect(errc::unsupported_isa, [&] { update_roofline(t, batch, on_reference, grad, adagrad, s); },
         "the roofline on the reference");
  expect(errc::size_mismatch, [&] { backward_update(t, batch, {}, {dy.data(), 2, 3, 0}, adagrad, s); },
         "dY of the wrong width");
  expect(errc::aliasing, [&] { backward_update(t, batch, {}, {table.data(), 2, 4, 0}, adagrad, s); },
         "dY inside the table");
  expect(errc::aliasing, [&] { backward_update(t, batch, {}, grad, adagrad, {table.data(), 5, 4, 0}); },
         "the state over the table");

  sparse_gradient g;
  g.dim = 4;
  g.rows = {3, 1};
  g.values.assign(8, 1.0f);
  expect(errc::invalid_option, [&] { apply_sparse_gradient(t, g, adagrad, s); }, "rows out of order");
  g.rows = {1, 5};
  expect(errc::index_out_of_range, [&] { apply_sparse_gradient(t, g, adagrad, s); }, "a row past the table");
  g.rows = {1, 3};
  g.values.resize(7);
  expect(errc::size_mismatch, [&] { apply_sparse_gradient(t, g, adagrad, s); }, "values short of rows x dim");
  g.values.resize(8);
  g.dim = 3;
  expect(errc::size_mismatch, [&] { apply_sparse_gradient(t, g, adagrad, s); }, "a gradient of another dim");
}

}  // namespace
}  // namespace embag::test
