// Stress: 16 std::threads call every entry point that only reads the table (forward in each mode,
// forward with clip max_norm, backward dense and sparse, the per-sample-weight gradient) on ONE
// shared table at the same time, with the library's own TBB parallelism (max_threads 1 to 3)
// nested inside them, and compare every result bit for bit with the same call made on one thread
// before they started. Sized for a few seconds in release and under half a minute with
// ThreadSanitizer (tests/tsan.supp says how to run it there).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "embag/embag.hpp"

namespace embag::test {
namespace {

constexpr int callers = 16;
constexpr std::int64_t table_rows = 4096;
constexpr std::int64_t table_dim = 70;  // a tail on every ISA's vector width, and a padded row stride
constexpr std::int64_t hot_rows = 32;   // drawn often: repeated rows for backward to coalesce
constexpr float canary = -12345.0f;

// ThreadSanitizer slows every call about tenfold and, with Debian's uninstrumented oneTBB, must
// also match thousands of false reports against tests/tsan.supp: an eighth of the calls there.
#if defined(__SANITIZE_THREAD__)
#define EMBAG_STRESS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EMBAG_STRESS_TSAN 1
#endif
#endif
#ifdef EMBAG_STRESS_TSAN
constexpr int calls_divisor = 8;
#else
constexpr int calls_divisor = 1;
#endif

enum class op { forward, forward_clip, backward_dense, backward_sparse, weights_grad };

const char* name_of(op kind) {
  switch (kind) {
    case op::forward: return "forward";
    case op::forward_clip: return "forward_clip";
    case op::backward_dense: return "backward_dense";
    case op::backward_sparse: return "backward_sparse";
    case op::weights_grad: return "per_sample_weights_grad";
  }
  return "?";
}

// One call's inputs: a batch of bags over the shared table and its options.
struct job {
  op kind = op::forward;
  options opts;
  bool narrow_indices = false, narrow_offsets = false;  // int32 instead of int64
  std::vector<std::int64_t> indices, offsets;
  std::vector<std::int32_t> indices32, offsets32;
  std::vector<float> weights;
  std::vector<float> grad_output;    // num_bags x dim: backward and the weights gradient
  std::vector<std::int64_t> argmax;  // backward of mode max: what forward wrote

  std::int64_t num_bags() const { return std::ssize(offsets); }
  bags batch() const {
    return bags::from_offsets(narrow_indices ? index_span(indices32) : index_span(indices),
                              narrow_offsets ? index_span(offsets32) : index_span(offsets), weights);
  }
  std::string describe() const {
    return std::string(name_of(kind)) + " mode=" + std::string(to_string(opts.mode)) + (weights.empty() ? "" : " weighted") +
           " idx" + (narrow_indices ? "32" : "64") + " offsets" + (narrow_offsets ? "32" : "64") +
           " B=" + std::to_string(num_bags()) + " nnz=" + std::to_string(indices.size()) +
           (opts.padding_idx ? " padding=" + std::to_string(*opts.padding_idx) : "") +
           (opts.max_norm ? " max_norm=" + std::to_string(*opts.max_norm) + " p=" + std::to_string(opts.norm_type) : "") +
           (opts.scale_grad_by_freq ? " freq" : "");
  }
};

// What a call wrote: the output, dense gradient, sparse values or weights gradient; and the argmax
// of forward max or the rows of the sparse gradient.
struct result {
  std::vector<float> values;
  std::vector<std::int64_t> rows;
};

bool same_bits(const result& a, const result& b) {
  return a.rows == b.rows && a.values.size() == b.values.size() &&
         std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(float)) == 0;
}

// A caller thread's own state, reused across its calls as a server would.
struct caller {
  workspace scratch;
  sparse_gradient sparse;
  result got;
};

// Fills the table from a seed: N(0, 1), every seventh row rounded to halves so max sees ties.
void fill(table& t) {
  std::mt19937_64 rng(2024);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::int64_t r = 0; r < t.rows(); ++r)
    for (std::int64_t d = 0; d < t.dim(); ++d) {
      const float v = normal(rng);
      t.row(r)[d] = r % 7 == 0 ? std::round(v * 2.0f) / 2.0f : v;
    }
}

std::uint64_t checksum(const table& t) {
  std::uint64_t h = 14695981039346656037ull;  // FNV-1a over every byte, row padding included
  const auto* p = reinterpret_cast<const unsigned char*>(t.row(0));
  for (std::int64_t i = 0; i < t.rows() * t.row_stride() * std::int64_t{sizeof(float)}; ++i)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Makes the call a job describes on `which` (the process-wide choice when empty) and leaves what it
// wrote in c.got.
void run(const job& j, table_view<const float> table, std::optional<isa> which, int max_threads, caller& c) {
  options opts = j.opts;
  opts.execution.isa = which;
  opts.execution.max_threads = max_threads;
  const bags batch = j.batch();
  const std::int64_t b = j.num_bags(), d = table.dim;
  const matrix_view<const float> dy{j.grad_output.data(), b, d, d};
  result& got = c.got;
  switch (j.kind) {
    case op::forward:
    case op::forward_clip:
      got.values.assign(static_cast<std::size_t>(b * d), canary);
      got.rows.assign(opts.mode == mode::max ? static_cast<std::size_t>(b * d) : 0, -7);
      forward(table, batch, opts, {got.values.data(), b, d, d}, got.rows);
      break;
    case op::backward_dense:
      got.values.assign(static_cast<std::size_t>(table.rows * d), 0.0f);
      got.rows.clear();
      backward_dense(batch, opts, dy, {got.values.data(), table.rows, d, d}, j.argmax, &c.scratch);
      break;
    case op::backward_sparse:
      backward_sparse(table.rows, batch, opts, dy, c.sparse, j.argmax, &c.scratch);
      got.rows = c.sparse.rows;
      got.values = c.sparse.values;
      break;
    case op::weights_grad:
      got.values.assign(j.indices.size(), canary);
      got.rows.clear();
      per_sample_weights_grad(table, batch, opts, dy, got.values);
      break;
  }
}

// A random batch for `kind` in mode m over the shared table. Backward of mode max gets the argmax
// of its forward, computed here, before any thread starts.
job make_job(const table& t, op kind, mode m, bool weighted, bool narrow_indices, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto uniform = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
  const auto chance = [&](double p) { return std::bernoulli_distribution(p)(rng); };
  std::normal_distribution<float> normal(0.0f, 1.0f);
  job j;
  j.kind = kind;
  j.opts.mode = m;
  j.narrow_indices = narrow_indices;
  j.narrow_offsets = chance(0.5);
  // about 3,000 rows read: enough that max_threads 2 and 3 split a call into several blocks
  const std::int64_t bags = uniform(64, 160);
  for (std::int64_t b = 0; b < bags; ++b) {
    j.offsets.push_back(std::ssize(j.indices));
    const std::int64_t length = chance(0.1) ? 0 : uniform(1, 40);
    for (std::int64_t i = 0; i < length; ++i)
      j.indices.push_back(chance(0.3) ? uniform(0, hot_rows - 1) : uniform(0, t.rows() - 1));
  }
  j.indices32.assign(j.indices.begin(), j.indices.end());
  j.offsets32.assign(j.offsets.begin(), j.offsets.end());
  if (weighted) {  // a weighted mean divides by the sum of weights: keep it away from 0
    std::uniform_real_distribution<float> w(m == mode::mean ? 0.1f : -1.0f, 2.0f);
    for (std::size_t i = 0; i < j.indices.size(); ++i) j.weights.push_back(w(rng));
  }
  if (chance(0.3)) j.opts.padding_idx = uniform(0, hot_rows - 1);
  if (kind == op::forward_clip) {
    // around the typical norm of a row of 70 N(0, 1) values, so some rows are clipped and some not
    const float norm_types[] = {1.0f, 2.0f, 3.0f, std::numeric_limits<float>::infinity()};
    const float typical[] = {56.0f, 8.4f, 4.8f, 2.5f};
    const auto p = uniform(0, 3);
    j.opts.norm_type = norm_types[p];
    j.opts.max_norm = typical[p] * std::uniform_real_distribution<float>(0.9f, 1.1f)(rng);
    j.opts.max_norm_mode = max_norm_flavour::clip;
  }
  if (kind == op::backward_dense || kind == op::backward_sparse) j.opts.scale_grad_by_freq = chance(0.5);
  if (kind != op::forward && kind != op::forward_clip) {
    j.grad_output.resize(static_cast<std::size_t>(bags * t.dim()));
    for (float& v : j.grad_output) v = normal(rng);
  }
  if (m == mode::max && (kind == op::backward_dense || kind == op::backward_sparse)) {
    j.argmax.resize(static_cast<std::size_t>(bags * t.dim()));
    std::vector<float> out(j.argmax.size());
    options opts = j.opts;
    opts.execution.max_threads = 1;
    forward(t.view(), j.batch(), opts, {out.data(), bags, t.dim(), t.dim()}, j.argmax);
  }
  return j;
}

// Per caller, one job of each kind, their modes, weights and index widths varying with the caller.
std::vector<job> jobs_of(const table& t, int caller) {
  const mode modes[] = {mode::sum, mode::mean, mode::max};
  const std::uint64_t seed = 1000 + 100 * static_cast<std::uint64_t>(caller);
  const bool odd = caller % 2 == 1;
  const mode m = modes[caller % 3], n = modes[(caller + 1) % 3];
  return {
      make_job(t, op::forward, mode::sum, false, odd, seed + 0),
      make_job(t, op::forward, mode::mean, false, !odd, seed + 1),
      make_job(t, op::forward, mode::max, false, odd, seed + 2),
      make_job(t, op::forward, odd ? mode::mean : mode::sum, true, !odd, seed + 3),
      make_job(t, op::forward_clip, m, false, odd, seed + 4),
      make_job(t, op::backward_dense, m, m != mode::max && odd, !odd, seed + 5),
      make_job(t, op::backward_sparse, n, n != mode::max && !odd, odd, seed + 6),
      make_job(t, op::weights_grad, odd ? mode::mean : mode::sum, true, !odd, seed + 7),
  };
}

// The shared table, every caller's jobs, and each job's result on each ISA slot made on this
// thread with max_threads 1; then `callers` threads make `calls_each` calls each, cycling through
// their jobs, max_threads 1..3 and the ISA slots, and count the results that differ.
void hammer(int calls_each, const std::vector<std::optional<isa>>& slots) {
  table shared(table_rows, table_dim);
  fill(shared);
  const table_view<const float> view = std::as_const(shared).view();
  std::vector<std::vector<job>> jobs;
  std::vector<std::vector<std::vector<result>>> expected(callers);  // [caller][job][slot]
  caller main_thread;
  for (int t = 0; t < callers; ++t) {
    jobs.push_back(jobs_of(shared, t));
    for (const job& j : jobs[t]) {
      expected[t].emplace_back();
      for (const std::optional<isa>& which : slots) {
        run(j, view, which, 1, main_thread);
        expected[t].back().push_back(main_thread.got);
      }
    }
  }
  const std::uint64_t before = checksum(shared);

  // Written by their own thread only, read after join.
  std::vector<int> mismatches(callers, 0);
  std::vector<std::string> first_failure(callers);
  std::vector<std::thread> threads;
  for (int t = 0; t < callers; ++t)
    threads.emplace_back([&, t] {
      caller self;
      const int n = static_cast<int>(jobs[t].size()), s = static_cast<int>(slots.size());
      for (int k = 0; k < calls_each; ++k) {
        // threads start at different points of the cycles, so different calls overlap; the slot
        // moves on each round of jobs too, so every job meets every slot
        const int j = (k + t) % n, slot = (k + k / n + t) % s, max_threads = 1 + (k + t) % 3;
        std::string failure;
        try {
          run(jobs[t][j], view, slots[slot], max_threads, self);
          if (!same_bits(self.got, expected[t][j][slot])) failure = "differs from the single-threaded result";
        } catch (const std::exception& e) {
          failure = std::string("threw: ") + e.what();
        }
        if (failure.empty()) continue;
        if (mismatches[t]++ == 0)
          first_failure[t] = "call " + std::to_string(k) + ": " + jobs[t][j].describe() + " isa=" +
                             (slots[slot] ? std::string(to_string(*slots[slot])) : "default") +
                             " max_threads=" + std::to_string(max_threads) + ": " + failure;
      }
    });
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < callers; ++t)
    EXPECT_EQ(mismatches[t], 0) << "caller " << t << ", first: " << first_failure[t];
  EXPECT_EQ(checksum(shared), before) << "the table was written";
}

TEST(Stress, SixteenThreadsMixEveryReadOnlyCallOnOneTable) { hammer(320 / calls_divisor, {std::nullopt}); }

TEST(Stress, SixteenThreadsForceDifferentIsasAtOnce) {
  std::vector<std::optional<isa>> slots;
  for (isa which : available_isas()) slots.push_back(which);
  hammer(160 / calls_divisor, slots);
}

}  // namespace
}  // namespace embag::test
