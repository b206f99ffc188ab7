// Threads: results are bitwise identical whatever the thread count; many threads may call on one
// table at once; calls nest inside the caller's own TBB tasks and arenas.
#include <gtest/gtest.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "parallel.hpp"
#include "plan.hpp"
#include "support/run.hpp"

namespace embag::test {
namespace {

// Large enough that the plan splits it into many blocks on every thread count above one.
call_case large_case(std::uint64_t seed) {
  call_limits limits;
  limits.max_dim = 130;
  limits.max_rows = 20000;
  limits.max_bags = 3000;
  limits.max_bag_length = 50;
  return random_call(seed, limits);
}

void expect_same_bits(const call_case& c, const call_results& one, const call_results& many) {
  EXPECT_TRUE(same_bits(one.out, many.out, c.out_rows(), c.dim, c.out_stride)) << "forward";
  EXPECT_EQ(one.argmax, many.argmax);
  EXPECT_TRUE(same_bits(one.table_after, many.table_after, c.rows, c.dim, c.row_stride));
  EXPECT_TRUE(same_bits(one.dense_grad, many.dense_grad, c.rows, c.dim, c.dim)) << "backward dense";
  EXPECT_EQ(one.sparse.rows, many.sparse.rows);
  EXPECT_EQ(one.sparse.values, many.sparse.values) << "backward sparse";
  EXPECT_EQ(one.weights_grad, many.weights_grad) << "weights gradient";
}

class Determinism : public ::testing::TestWithParam<isa> {};

TEST_P(Determinism, SameBitsOnOneTwoAndEightThreads) {
  for (std::uint64_t seed = 1; seed <= 12; ++seed) {
    const call_case c = large_case(seed);
    SCOPED_TRACE(c.describe());
    const call_results one = run_case(c, GetParam(), 1);
    for (int threads : {2, 8, 0}) {
      SCOPED_TRACE("threads=" + std::to_string(threads));
      expect_same_bits(c, one, run_case(c, GetParam(), threads));
      if (HasFailure()) return;
    }
  }
}

// A call handed an arena runs in it (execution.arena) and gives the bits of an inline call.
TEST_P(Determinism, HandedArenasOfOneAndTwoThreadsGiveTheInlineBits) {
  tbb::task_arena arena_of_one(1), arena_of_two(2);
  for (std::uint64_t seed = 20; seed <= 27; ++seed) {
    const call_case c = large_case(seed);
    SCOPED_TRACE(c.describe());
    const call_results inline_results = run_case(c, GetParam(), 1);
    for (tbb::task_arena* arena : {&arena_of_one, &arena_of_two}) {
      SCOPED_TRACE("arena of " + std::to_string(arena->max_concurrency()) + " threads");
      execution how;
      how.isa = GetParam();
      how.arena = arena;
      expect_same_bits(c, inline_results, run_case(c, how));
      if (HasFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(EveryIsa, Determinism, ::testing::ValuesIn(available_isas()),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// One shared read-only table, a batch per caller thread, and the expected outputs precomputed.
struct shared_table_calls {
  call_case table_case;
  std::vector<call_case> batches;
  std::vector<std::vector<float>> expected;

  explicit shared_table_calls(int callers) {
    table_case = large_case(100);
    for (int t = 0; t < callers; ++t) {
      call_case c = large_case(200 + t);
      // the same table for every caller: indices redrawn within its rows
      c.rows = table_case.rows;
      c.dim = table_case.dim;
      c.row_stride = table_case.row_stride;
      c.table.clear();
      c.opts.max_norm_mode = max_norm_flavour::clip;  // readers only: the table is never written
      c.out_stride = c.dim;
      for (std::int64_t& i : c.indices) i %= c.rows;
      c.copy_to_32_bits();
      if (c.opts.padding_idx) c.opts.padding_idx = *c.opts.padding_idx % c.rows;
      batches.push_back(c);
      expected.push_back(call(t, isa::reference, 1));
    }
  }

  std::vector<float> call(int t, isa which, int threads) const {
    const call_case& c = batches[t];
    options opts = c.opts;
    opts.execution.isa = which;
    opts.execution.max_threads = threads;
    std::vector<float> out(static_cast<std::size_t>(std::max<std::int64_t>(c.out_rows() * c.dim, 1)));
    forward(table_case.view(), c.batch(), opts, {out.data(), c.out_rows(), c.dim, c.dim});
    return out;
  }
};

TEST(Concurrency, EightThreadsCallForwardOnOneTable) {
  constexpr int callers = 8, calls_each = 20;
  const shared_table_calls work(callers);
  const std::vector<float> table_before = work.table_case.table;
  std::vector<int> mismatches(callers, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < callers; ++t)
    threads.emplace_back([&, t] {
      for (int k = 0; k < calls_each; ++k)
        if (work.call(t, active_isa(), k % 3) != work.expected[t]) ++mismatches[t];
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < callers; ++t) EXPECT_EQ(mismatches[t], 0) << "caller " << t;
  EXPECT_EQ(table_before, work.table_case.table);
}

TEST(Concurrency, NestedInsideCallerTbbTasksAndArenas) {
  constexpr int callers = 8;
  const shared_table_calls work(callers);
  std::vector<int> mismatches(callers, 0);
  // the order TBB's spawn and wait give, stated in atomics ThreadSanitizer sees (Debian's libtbb
  // is not built for it; src/parallel.cpp's run_blocks does the same)
  std::atomic<bool> handed_over{false};
  std::atomic<int> finished{0};
  handed_over.store(true, std::memory_order_release);
  tbb::parallel_for(0, callers, [&](int t) {
    (void)handed_over.load(std::memory_order_acquire);
    if (work.call(t, active_isa(), 0) != work.expected[t]) ++mismatches[t];
    finished.fetch_add(1, std::memory_order_release);
  });
  (void)finished.load(std::memory_order_acquire);
  tbb::task_arena single(1);
  single.execute([&] {
    for (int t = 0; t < callers; ++t)
      if (work.call(t, active_isa(), 0) != work.expected[t]) ++mismatches[t];
  });
  for (int t = 0; t < callers; ++t) EXPECT_EQ(mismatches[t], 0) << "caller " << t;
}

TEST(Concurrency, ArenaWithAThreadCapIsAnError) {
  const call_case c = large_case(40);
  tbb::task_arena arena(2);
  options opts = c.opts;
  opts.execution.arena = &arena;
  opts.execution.max_threads = 2;
  std::vector<float> out = canary_buffer(c.out_rows(), c.out_stride);
  const std::vector<float> before = out;
  try {
    forward(c.view(), c.batch(), opts, {out.data(), c.out_rows(), c.dim, c.out_stride});
    FAIL() << "no error";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::invalid_option);
    EXPECT_NE(std::string(e.what()).find("execution.arena"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(same_bits(before, out, c.out_rows(), c.dim, c.out_stride));
}

// The ThreadPlan tests' pieces: how many blocks the plan cuts `bags` one-index bags of D = 128
// into on `how`; and a sleep past any linger of earlier calls.
int forward_blocks(const execution& how, std::int64_t bags, detail::pooling pool = detail::pooling::sum) {
  detail::bag_source one_each;
  one_each.nnz = one_each.num_bags = bags;
  one_each.one_index_each = true;
  detail::bag_blocks blocks;
  detail::plan_forward_blocks(one_each, pool, 128, detail::threads_for(how), blocks);
  return blocks.count;
}

void sleep_past_linger() {
  std::this_thread::sleep_for(std::chrono::microseconds(detail::thread_linger_us()) + std::chrono::milliseconds(20));
}

// A lookup (mode none) reads a row and writes a row per index, as one-index bags do, and splits as
// they do: 2,048 indices of D = 128 (512 Ki floats of work) split over two sleeping workers. Its
// work had counted only the rows read, and a lookup this size ran inline (embag.nn.Embedding's
// training step on 2 threads took 0.20-0.30 ms where one-index bags took 0.13).
TEST(ThreadPlan, LookupsSplitAsOneIndexBagsDo) {
  tbb::task_arena two(2);
  execution how;
  how.arena = &two;
  sleep_past_linger();
  EXPECT_EQ(forward_blocks(how, 2048, detail::pooling::lookup), forward_blocks(how, 2048));
  EXPECT_GT(forward_blocks(how, 2048), 1);
}

// The plan splits a small call over threads only while the workers linger after a threaded call
// (src/parallel.cpp): 1,024 one-index bags of D = 128 (256 Ki floats of work, under the 512 Ki that
// two sleeping workers need) run inline a while after the last threaded call, in blocks right
// after one. Only attempts whose call and plan together took less than the linger are judged
// (under an emulator or a preempted thread they may not).
TEST(ThreadPlan, SmallCallsAreSplitOnlyWhileWorkersLinger) {
  const std::chrono::microseconds linger(detail::thread_linger_us());
  tbb::task_arena two(2);  // two threads whatever this machine has
  execution how;
  how.arena = &two;
  const auto blocks_now = [&] { return forward_blocks(how, 1024); };
  sleep_past_linger();
  EXPECT_FALSE(detail::workers_lingering());
  EXPECT_EQ(blocks_now(), 1);
  if (linger.count() == 0) GTEST_SKIP() << "lingering is off (EMBAG_THREAD_LINGER_US=0)";
  int judged = 0;
  for (int attempt = 0; attempt < 50 && judged < 5; ++attempt) {
    const auto start = std::chrono::steady_clock::now();
    std::atomic<int> ran{0};
    detail::run_blocks(4, how, [&](std::int64_t) { ran.fetch_add(1); });
    const int blocks = blocks_now();
    if (std::chrono::steady_clock::now() - start >= linger) continue;
    ++judged;
    ASSERT_EQ(ran.load(), 4);
    EXPECT_GT(blocks, 1) << "attempt " << attempt;
  }
  if (judged == 0) GTEST_SKIP() << "no threaded call and plan within the linger of " << linger.count() << " us here";
  sleep_past_linger();
  EXPECT_FALSE(detail::workers_lingering());
  EXPECT_EQ(blocks_now(), 1);
}

// A call run inline only because the workers sleep wakes them when it follows another such call
// within the linger, so that a loop of small calls splits from its third call on; an isolated
// one, or one too small to split even over awake workers, wakes nobody. Judged only when the
// three calls took less than the linger (see above).
TEST(ThreadPlan, BackToBackInlineCallsWakeTheWorkers) {
  const std::chrono::microseconds linger(detail::thread_linger_us());
  if (linger.count() == 0) GTEST_SKIP() << "lingering is off (EMBAG_THREAD_LINGER_US=0)";
  tbb::task_arena two(2);
  execution how;
  how.arena = &two;
  const auto call = [&](std::int64_t bags) {  // a call's plan and run
    const int blocks = forward_blocks(how, bags);
    detail::run_blocks(blocks, how, [](std::int64_t) {});
    return blocks;
  };
  int judged = 0;
  for (int attempt = 0; attempt < 50 && judged < 3; ++attempt) {
    sleep_past_linger();
    const auto start = std::chrono::steady_clock::now();
    const int first = call(1024), second = call(1024);
    const bool lingering = detail::workers_lingering();
    const int third = call(1024);
    if (std::chrono::steady_clock::now() - start >= linger) continue;
    ++judged;
    EXPECT_EQ(first, 1) << "attempt " << attempt;
    EXPECT_EQ(second, 1) << "attempt " << attempt;
    EXPECT_TRUE(lingering) << "attempt " << attempt << ": the second inline call woke nobody";
    EXPECT_GT(third, 1) << "attempt " << attempt;
  }
  if (judged == 0) GTEST_SKIP() << "no three calls within the linger of " << linger.count() << " us here";
  sleep_past_linger();
  call(1024);
  EXPECT_FALSE(detail::workers_lingering()) << "an isolated call woke the workers";
  sleep_past_linger();
  call(128);  // 32 Ki floats: one block's worth, never split
  call(128);
  EXPECT_FALSE(detail::workers_lingering()) << "calls too small to split woke the workers";
}

TEST(Workspace, ReusedAcrossCallsGivesTheSameGradients) {
  workspace scratch;
  for (std::uint64_t seed = 300; seed < 310; ++seed) {
    const call_case c = large_case(seed);
    SCOPED_TRACE(c.describe());
    const call_results fresh = run_case(c, active_isa(), 0);
    options opts = c.opts;
    std::vector<float> dense = grad_start_for(c);
    const matrix_view<const float> dy{fresh.grad_output.data(), c.out_rows(), c.dim, c.dim};
    backward_dense(c.batch(), opts, dy, {dense.data(), c.rows, c.dim, c.dim}, fresh.argmax, &scratch);
    sparse_gradient sparse;
    backward_sparse(c.rows, c.batch(), opts, dy, sparse, fresh.argmax, &scratch);
    ASSERT_EQ(dense, fresh.dense_grad);
    ASSERT_EQ(sparse.rows, fresh.sparse.rows);
    ASSERT_EQ(sparse.values, fresh.sparse.values);
  }
}

}  // namespace
}  // namespace embag::test
