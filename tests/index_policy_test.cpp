// Index policies (options.bad_indices, pruned_ids, remap): a call that skips is bitwise the call
// without the skipped indices (forward, its argmax, backward dense and sparse, the weights'
// gradient), on every ISA, single and batched on 1, 2 and 8 threads; the report counts what was
// skipped; what is refused is refused before anything is written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "embag/batched.hpp"
#include "embag/quantize.hpp"
#include "support/cases.hpp"

namespace embag::test {
namespace {

int calls_per_isa() {
  const char* env = std::getenv("EMBAG_TEST_CASES");
  return std::max(1, (env ? std::atoi(env) : 2000) / 10);
}

bool same_report(const index_report& a, const index_report& b) {
  return a.skipped == b.skipped && a.first_position == b.first_position && a.first_value == b.first_value &&
         a.pruned == b.pruned;
}

std::string describe(const index_report& r) {
  return "{skipped " + std::to_string(r.skipped) + ", first indices[" + std::to_string(r.first_position) +
         "] = " + std::to_string(r.first_value) + ", pruned " + std::to_string(r.pruned) + "}";
}

// A random valid call, then damaged: some positions given an index the table cannot serve (past
// its rows, negative, huge) or -1 (pruned), which the policies skip; `filtered` is the same call
// without those positions (bags given by offsets), what the skipping call must equal bit for bit.
struct damaged_call {
  call_case c;                // the damaged call, its policies set
  call_case filtered;         // the call without the skipped positions
  std::vector<bool> skipped;  // per position of c
  index_report expected;
};

// c's call reading `rows` (one per position of c) without the skipped positions, bags by offsets
// and no index policy.
call_case without_skipped(const call_case& c, const std::vector<bool>& skipped, const std::vector<std::int64_t>& rows) {
  call_case f = c;
  f.opts.bad_indices = bad_index_policy::error;
  f.opts.pruned_ids = false;
  f.opts.remap = {};
  f.opts.include_last_offset = false;
  f.layout = bag_layout::offsets;
  f.indices.clear();
  f.weights.clear();
  f.boundaries.clear();
  const std::vector<std::int64_t> starts = c.bag_starts();
  for (std::size_t b = 0; b + 1 < starts.size(); ++b) {
    f.boundaries.push_back(std::ssize(f.indices));
    for (std::int64_t j = starts[b]; j < starts[b + 1]; ++j) {
      if (skipped[std::size_t(j)]) continue;
      f.indices.push_back(rows[std::size_t(j)]);
      if (!c.weights.empty()) f.weights.push_back(c.weights[std::size_t(j)]);
    }
  }
  f.copy_to_32_bits();
  return f;
}

damaged_call damage(std::uint64_t seed, bool skip_bad, bool pruned_ids) {
  damaged_call d;
  d.c = random_call(seed, {.max_dim = 70, .max_rows = 120});
  call_case& c = d.c;
  c.opts.execution = {};
  c.opts.max_norm_mode = max_norm_flavour::clip;  // in place takes no policy
  c.opts.bad_indices = skip_bad ? bad_index_policy::skip : bad_index_policy::error;
  c.opts.pruned_ids = pruned_ids;
  std::mt19937_64 rng(seed);
  const std::int64_t nnz = std::ssize(c.indices);
  d.skipped.assign(static_cast<std::size_t>(nnz), false);
  for (std::int64_t j = 0; j < nnz; ++j) {
    if (rng() % 4 != 0) continue;
    std::int64_t value = -1;
    const bool bad = skip_bad && (!pruned_ids || rng() % 2 == 0);
    if (bad) {
      const std::int64_t choices[] = {c.rows, c.rows + std::int64_t(rng() % 7), -2 - std::int64_t(rng() % 5),
                                      std::numeric_limits<std::int32_t>::max(),
                                      c.index32 ? std::numeric_limits<std::int32_t>::min() : std::int64_t{1} << 40};
      value = choices[rng() % std::size(choices)];
      if (d.expected.skipped++ == 0) d.expected.first_position = j, d.expected.first_value = value;
    } else if (pruned_ids) {
      ++d.expected.pruned;
    } else {
      continue;
    }
    c.indices[std::size_t(j)] = value;
    d.skipped[std::size_t(j)] = true;
  }
  c.copy_to_32_bits();
  d.filtered = without_skipped(c, d.skipped, c.indices);
  return d;
}

// out (c's output rows) against the filtered call's: pooled modes row for row; mode none, each
// kept position's row is the filtered call's next, a skipped one is zeros.
::testing::AssertionResult same_as_filtered(const damaged_call& d, const std::vector<float>& out,
                                            const std::vector<float>& want) {
  const call_case& c = d.c;
  if (c.opts.mode != mode::none) return same_bits(want, out, c.out_rows(), c.dim, c.out_stride);
  std::int64_t kept = 0;
  for (std::int64_t j = 0; j < std::ssize(c.indices); ++j) {
    for (std::int64_t k = 0; k < c.dim; ++k) {
      const float got = out[std::size_t(j * c.out_stride + k)];
      const float expected = d.skipped[std::size_t(j)] ? 0.0f : want[std::size_t(kept * c.out_stride + k)];
      if (std::memcmp(&got, &expected, sizeof got) != 0)
        return ::testing::AssertionFailure() << "row " << j << " col " << k << ": " << got << ", want " << expected;
    }
    kept += !d.skipped[std::size_t(j)];
  }
  return ::testing::AssertionSuccess();
}

execution on(isa which, int threads) {
  execution how;
  how.isa = which;
  how.max_threads = threads;
  return how;
}

class IndexPolicies : public ::testing::TestWithParam<isa> {};

// Forward (and max's argmax) skipping bad and pruned indices == forward without them.
TEST_P(IndexPolicies, ForwardSkipsAsIfAbsent) {
  for (int n = 0; n < calls_per_isa(); ++n) {
    damaged_call d = damage(std::uint64_t(n) + 1, n % 3 != 2, n % 3 != 0);
    call_case& c = d.c;
    index_report report;
    report.skipped = 99;  // must be overwritten
    c.opts.report = &report;
    c.opts.execution = on(GetParam(), 1 + n % 2);
    d.filtered.opts.execution = c.opts.execution;
    const bool max = c.opts.mode == mode::max;
    std::vector<float> out = canary_buffer(c.out_rows(), c.out_stride),
                       want = canary_buffer(d.filtered.out_rows(), c.out_stride);
    std::vector<std::int64_t> argmax(max ? std::size_t(c.out_rows() * c.dim) : 0), want_argmax(argmax.size());
    workspace ws;
    forward(c.view(), c.batch(), c.opts, {out.data(), c.out_rows(), c.dim, c.out_stride}, argmax, &ws);
    forward(d.filtered.view(), d.filtered.batch(), d.filtered.opts,
            {want.data(), d.filtered.out_rows(), c.dim, c.out_stride}, want_argmax);
    ASSERT_TRUE(same_as_filtered(d, out, want)) << c.describe();
    ASSERT_EQ(argmax, want_argmax) << c.describe();
    ASSERT_TRUE(same_report(report, d.expected)) << describe(report) << " want " << describe(d.expected) << c.describe();
  }
}

// Backward dense and sparse, and the weights' gradient (0 at skipped positions), == without them.
TEST_P(IndexPolicies, BackwardSkipsAsIfAbsent) {
  for (int n = 0; n < calls_per_isa() / 2; ++n) {
    damaged_call d = damage(std::uint64_t(n) + 5000, true, n % 2 == 0);
    call_case &c = d.c, &f = d.filtered;
    if (c.opts.mode == mode::none) continue;  // the filtered call has other output rows
    index_report report;
    c.opts.report = &report;
    c.opts.execution = f.opts.execution = on(GetParam(), 1 + n % 2);
    c.opts.max_norm.reset();
    f.opts.max_norm.reset();
    std::vector<std::int64_t> argmax;
    std::vector<float> scratch_out(std::size_t(std::max<std::int64_t>(1, c.out_rows() * c.dim)));
    if (c.opts.mode == mode::max) {
      argmax.resize(std::size_t(c.out_rows() * c.dim));
      forward(f.view(), f.batch(), f.opts, {scratch_out.data(), f.out_rows(), c.dim, c.dim}, argmax);
    }
    std::vector<float> grad_output(std::size_t(c.out_rows() * c.dim));
    std::mt19937 rng{std::uint32_t(n)};
    std::normal_distribution<float> normal;
    for (float& g : grad_output) g = normal(rng);
    const matrix_view<const float> dy{grad_output.data(), c.out_rows(), c.dim, c.dim};

    std::vector<float> dense(std::size_t(c.rows * c.dim), 0.25f), want_dense(dense);
    backward_dense(c.batch(), c.opts, dy, {dense.data(), c.rows, c.dim, 0}, argmax);
    backward_dense(f.batch(), f.opts, dy, {want_dense.data(), c.rows, c.dim, 0}, argmax);
    ASSERT_TRUE(same_bits(want_dense, dense, c.rows, c.dim, c.dim)) << c.describe();
    ASSERT_TRUE(same_report(report, d.expected)) << describe(report) << c.describe();

    sparse_gradient sparse, want_sparse;
    backward_sparse(c.rows, c.batch(), c.opts, dy, sparse, argmax);
    backward_sparse(f.rows, f.batch(), f.opts, dy, want_sparse, argmax);
    ASSERT_EQ(sparse.rows, want_sparse.rows) << c.describe();
    ASSERT_TRUE(same_bits(want_sparse.values, sparse.values, std::ssize(sparse.rows), c.dim, c.dim)) << c.describe();

    if (c.weights.empty() || c.opts.mode == mode::max) continue;
    std::vector<float> weights_grad(c.indices.size(), 7.0f), want_weights_grad(f.indices.size());
    per_sample_weights_grad(c.view(), c.batch(), c.opts, dy, weights_grad);
    per_sample_weights_grad(f.view(), f.batch(), f.opts, dy, want_weights_grad);
    std::size_t kept = 0;
    for (std::size_t j = 0; j < c.indices.size(); ++j) {
      const float want = d.skipped[j] ? 0.0f : want_weights_grad[kept++];
      ASSERT_EQ(std::memcmp(&weights_grad[j], &want, sizeof want), 0) << "position " << j << c.describe();
    }
  }
}

// A batch whose tables (of every dtype) skip: each table bitwise its own single call, each report
// its own, on 1, 2 and 8 threads.
TEST_P(IndexPolicies, BatchedAsSingleCalls) {
  for (int n = 0; n < calls_per_isa() / 4; ++n) {
    const execution how = on(GetParam(), n % 3 == 0 ? 1 : n % 3 == 1 ? 2 : 8);
    std::vector<damaged_call> calls;
    for (int t = 0; t < 1 + n % 5; ++t) calls.push_back(damage(std::uint64_t(n) * 8 + std::uint64_t(t) + 9000, true, t % 2));
    std::vector<index_report> reports(calls.size()), single_reports(calls.size());
    std::vector<std::vector<float>> outs;
    std::vector<table_lookup> lookups;
    std::vector<compressed_table> stored;  // the tables of other dtypes than f32
    stored.reserve(calls.size());
    for (std::size_t t = 0; t < calls.size(); ++t) {
      call_case& c = calls[t].c;
      c.opts.report = &reports[t];
      outs.push_back(canary_buffer(c.out_rows(), c.out_stride));
      const dtype type = all_dtypes[(std::size_t(n) + t) % std::size(all_dtypes)];
      compressed_table_view rows{reinterpret_cast<const std::byte*>(c.table.data()), c.rows, c.dim, c.row_stride * 4, dtype::f32};
      if (type != dtype::f32) {
        c.opts.max_norm.reset();  // f32 tables only
        rows = stored.emplace_back(quantize(c.view(), type)).view();
      }
      lookups.push_back({rows, c.batch(), c.opts, {outs[t].data(), c.out_rows(), c.dim, c.out_stride}});
    }
    forward_batched(lookups, how);
    for (std::size_t t = 0; t < calls.size(); ++t) {
      call_case& c = calls[t].c;
      options opts = c.opts;
      opts.execution = how;
      opts.report = &single_reports[t];
      std::vector<float> want = canary_buffer(c.out_rows(), c.out_stride);
      forward(lookups[t].table, c.batch(), opts, {want.data(), c.out_rows(), c.dim, c.out_stride});
      ASSERT_TRUE(same_bits(want, outs[t], c.out_rows(), c.dim, c.out_stride)) << "tables[" << t << "]" << c.describe();
      ASSERT_TRUE(same_report(reports[t], calls[t].expected)) << "tables[" << t << "] " << describe(reports[t]);
      ASSERT_TRUE(same_report(single_reports[t], calls[t].expected)) << "tables[" << t << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isas, IndexPolicies, ::testing::ValuesIn(available_isas()),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// A pruned table: ids remapped to its compacted rows (int32 and int64 remaps, -1 for pruned ids)
// == the call on the rows themselves without the pruned ids.
TEST(Remap, ReadsTheCompactedRows) {
  for (int n = 0; n < 40; ++n) {
    call_case c = random_call(std::uint64_t(n) + 300, {.max_dim = 40, .max_rows = 60});
    c.opts.execution = {};
    c.opts.max_norm_mode = max_norm_flavour::clip;
    std::mt19937_64 rng{std::uint64_t(n)};
    // ids: the rows shuffled into a space twice as large, the rest pruned
    const std::int64_t ids = 2 * c.rows + 1;
    std::vector<std::int64_t> remap(std::size_t(ids), -1), id_of_row(std::size_t(c.rows));
    std::vector<std::int64_t> order(static_cast<std::size_t>(ids));
    for (std::int64_t i = 0; i < ids; ++i) order[std::size_t(i)] = i;
    std::shuffle(order.begin(), order.end(), rng);
    for (std::int64_t r = 0; r < c.rows; ++r) {
      id_of_row[std::size_t(r)] = order[std::size_t(r)];
      remap[std::size_t(order[std::size_t(r)])] = r;
    }
    const std::int64_t pruned_id = order[std::size_t(c.rows)];
    damaged_call d;
    d.c = c;
    d.skipped.assign(c.indices.size(), false);
    for (std::size_t j = 0; j < c.indices.size(); ++j) {
      if (rng() % 5 == 0) {
        d.c.indices[j] = pruned_id;
        d.skipped[j] = true;
        ++d.expected.pruned;
      } else {
        d.c.indices[j] = id_of_row[std::size_t(c.indices[j])];
      }
    }
    d.c.copy_to_32_bits();
    d.filtered = without_skipped(d.c, d.skipped, c.indices);  // the rows themselves
    const call_case& f = d.filtered;

    std::vector<std::int32_t> remap32(remap.begin(), remap.end());
    index_report report;
    d.c.opts.remap = n % 2 ? index_span(remap32) : index_span(remap);
    d.c.opts.report = &report;
    std::vector<float> out = canary_buffer(d.c.out_rows(), c.out_stride), want = canary_buffer(f.out_rows(), c.out_stride);
    forward(d.c.view(), d.c.batch(), d.c.opts, {out.data(), d.c.out_rows(), c.dim, c.out_stride});
    forward(f.view(), f.batch(), f.opts, {want.data(), f.out_rows(), c.dim, c.out_stride});
    ASSERT_TRUE(same_as_filtered(d, out, want)) << d.c.describe();
    ASSERT_TRUE(same_report(report, d.expected)) << describe(report);
  }
}

// The refusals: each an error naming what is wrong, the output and the report untouched.
struct refusal_case {
  std::vector<std::int64_t> indices{0, 1, 2, 3};
  std::vector<std::int64_t> offsets{0, 2};
  std::vector<float> table = std::vector<float>(4 * 4, 1.0f);
  std::vector<float> out = std::vector<float>(2 * 4, -3.0f);
  index_report report{-5, -5, -5, -5};
  options opts;

  refusal_case() { opts.report = &report; }
  void run() {
    forward(table_view<const float>{table.data(), 4, 4, 4}, bags::from_offsets(indices, offsets), opts,
            {out.data(), 2, 4, 4});
  }
  bool untouched() const {
    return std::all_of(out.begin(), out.end(), [](float v) { return v == -3.0f; }) &&
           same_report(report, index_report{-5, -5, -5, -5});
  }
};

void expect_refused(refusal_case& r, errc code, const std::string& says) {
  try {
    r.run();
    ADD_FAILURE() << "accepted; wanted " << to_string(code) << ": " << says;
  } catch (const error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
  }
  EXPECT_TRUE(r.untouched());
}

TEST(IndexPolicyRefusals, SkipNeedsAReport) {
  refusal_case r;
  r.opts.bad_indices = bad_index_policy::skip;
  r.opts.report = nullptr;
  expect_refused(r, errc::invalid_option, "bad_indices = skip needs opts.report");
}

TEST(IndexPolicyRefusals, ErrorPolicyNamesTheBadIndexEvenWithPrunedIds) {
  refusal_case r;
  r.opts.pruned_ids = true;
  r.indices = {0, -1, -2, 1};
  expect_refused(r, errc::index_out_of_range, "indices[2] = -2 is out of range [0, 4)");
}

TEST(IndexPolicyRefusals, RemapValueOutsideTheTable) {
  refusal_case r;
  const std::vector<std::int64_t> remap{0, 1, 2, 9, -1};
  r.opts.remap = remap;
  expect_refused(r, errc::invalid_option, "remap[3] = 9 (for indices[3]) is out of range [-1, 4)");
}

TEST(IndexPolicyRefusals, IdOutsideTheRemap) {
  refusal_case r;
  const std::vector<std::int32_t> remap{0, 1, 2};
  r.opts.remap = remap;
  expect_refused(r, errc::index_out_of_range, "indices[3] = 3 is out of range [0, 3) of remap");
}

TEST(IndexPolicyRefusals, MaxNormInPlace) {
  refusal_case r;
  r.opts.pruned_ids = true;
  r.opts.max_norm = 1.0f;
  r.opts.max_norm_mode = max_norm_flavour::in_place;
  expect_refused(r, errc::invalid_option, "max_norm in place takes no index policy");
}

TEST(IndexPolicyRefusals, ReportOverTheOutput) {
  refusal_case r;
  r.opts.bad_indices = bad_index_policy::skip;
  r.opts.report = reinterpret_cast<index_report*>(r.out.data());
  try {
    r.run();
    ADD_FAILURE() << "accepted";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::aliasing) << e.what();
  }
}

// A batch: two tables sharing one report are refused; a bad second table leaves the first one's
// report unwritten.
TEST(IndexPolicyRefusals, BatchedReports) {
  refusal_case a, b;
  a.opts.bad_indices = b.opts.bad_indices = bad_index_policy::skip;
  b.opts.report = &a.report;
  const auto lookup = [](refusal_case& r) {
    return table_lookup{{reinterpret_cast<const std::byte*>(r.table.data()), 4, 4, 16, dtype::f32},
                        bags::from_offsets(r.indices, r.offsets), r.opts, {r.out.data(), 2, 4, 4}};
  };
  const auto expect_batch_refused = [&](errc code, const std::string& says) {
    const std::vector<table_lookup> lookups{lookup(a), lookup(b)};
    try {
      forward_batched(lookups);
      ADD_FAILURE() << "accepted; wanted " << says;
    } catch (const error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
    EXPECT_TRUE(a.untouched());
  };
  expect_batch_refused(errc::aliasing, "tables[0]'s report overlaps tables[1]'s report");
  b.opts.report = &b.report;
  b.opts.bad_indices = bad_index_policy::error;
  b.indices[1] = 7;
  expect_batch_refused(errc::index_out_of_range, "tables[1]: indices[1] = 7");
  EXPECT_TRUE(b.untouched());
}

}  // namespace
}  // namespace embag::test
