// Hand-written cases pinning each line of DESIGN.md section 2 (forward semantics), on every ISA this
// CPU has. Tables hold small integers and halves, so sums and means are exact and every expected
// value is written out by hand next to its case.
//
// Each case is written for a narrow table (d = 1, 2 or 4 hand columns) and run in several shapes:
//  - tiled: every hand column repeated so D = 9d or 16d (hand column c lands on columns c, c + d,
//    ...), which takes the kernels' vector loops, their scalar tails and their register-resident
//    paths for D in {16, 32, 64}; the expected values tile the same way;
//  - strided: the table's row_stride exceeds D and its gap cells hold NaN (a read of them would
//    poison the result); the output's row_stride exceeds D and its gap cells hold a canary that
//    must survive every call.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "support/cases.hpp"

namespace embag::test {
namespace {

const float NaN = std::numeric_limits<float>::quiet_NaN();
const float Inf = std::numeric_limits<float>::infinity();

using matrix = std::vector<std::vector<float>>;  // hand-written, R x d
using index_matrix = std::vector<std::vector<std::int64_t>>;

options in_mode(mode m) {
  options o;
  o.mode = m;
  return o;
}

options with_max_norm(mode m, float max_norm, float norm_type, max_norm_flavour flavour) {
  options o = in_mode(m);
  o.max_norm = max_norm;
  o.norm_type = norm_type;
  o.max_norm_mode = flavour;
  return o;
}

std::string mode_name(mode m) { return std::string(to_string(m)); }

// ---------------------------------------------------------------------------------------------
// Shapes: how a hand-written case is laid out in memory.

struct shape {
  const char* name;
  std::int64_t tile;       // D = tile * d
  std::int64_t table_gap;  // table row_stride - D, gap cells NaN
  std::int64_t out_gap;    // output row_stride - D, gap cells canary
};

std::ostream& operator<<(std::ostream& os, const shape& s) { return os << s.name; }

const shape shapes[] = {
    {"narrow", 1, 0, 0},     {"narrow_strided", 1, 3, 2},   {"tiled9_strided", 9, 1, 5},
    {"tiled16", 16, 0, 0},   {"tiled16_strided", 16, 2, 3},
};

// The hand-written R x d matrix m, each column repeated `tile` times, rows `stride` floats apart,
// the cells past D (and a lone cell for an empty matrix) set to `gap`.
std::vector<float> tiled(const matrix& m, std::int64_t d, std::int64_t tile, std::int64_t stride, float gap) {
  const std::int64_t rows = std::ssize(m), dim = d * tile;
  std::vector<float> v(static_cast<std::size_t>(std::max<std::int64_t>(rows * stride, 1)), gap);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < dim; ++c) v[r * stride + c] = m[r][c % d];
  return v;
}

bool same_value(float want, float got, double tolerance) {
  if (std::isnan(want)) return std::isnan(got);
  if (tolerance == 0) return got == want;
  return std::fabs(double(got) - want) <= tolerance * std::fabs(double(want));
}

// got (rows x D, rows `stride` apart) holds the tiled hand-written `want`: exactly (NaN matching
// NaN) or within a relative tolerance.
::testing::AssertionResult cells_match(const matrix& want, std::int64_t d, const std::vector<float>& got,
                                       std::int64_t dim, std::int64_t stride, double tolerance = 0) {
  int wrong = 0;
  std::ostringstream first;
  for (std::int64_t r = 0; r < std::ssize(want); ++r)
    for (std::int64_t c = 0; c < dim; ++c) {
      const float w = want[r][c % d], g = got[r * stride + c];
      if (!same_value(w, g, tolerance) && wrong++ == 0) first << "[" << r << "][" << c << "] = " << g << ", want " << w;
    }
  if (wrong > 0) return ::testing::AssertionFailure() << wrong << " cells differ, first " << first.str();
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult indices_match(const index_matrix& want, std::int64_t d,
                                         const std::vector<std::int64_t>& got, std::int64_t dim) {
  if (std::ssize(got) != std::ssize(want) * dim)
    return ::testing::AssertionFailure() << "argmax has " << got.size() << " entries, want " << want.size() * dim;
  int wrong = 0;
  std::ostringstream first;
  for (std::int64_t r = 0; r < std::ssize(want); ++r)
    for (std::int64_t c = 0; c < dim; ++c)
      if (got[r * dim + c] != want[r][c % d] && wrong++ == 0)
        first << "[" << r << "][" << c << "] = " << got[r * dim + c] << ", want " << want[r][c % d];
  if (wrong > 0) return ::testing::AssertionFailure() << wrong << " entries differ, first " << first.str();
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------------
// A hand-written call, and the encodings of its bags.

struct problem {
  matrix table;
  std::vector<std::int64_t> indices;
  std::vector<std::int64_t> offsets;  // where each bag starts: B entries
  std::vector<float> weights = {};
  options opts = {};
};

struct encoding {
  const char* name;
  bag_layout layout = bag_layout::offsets;
  bool include_last_offset = false;
  bool index32 = false, boundary32 = false;
};

const encoding offsets64{"offsets, int64"};

const encoding encodings[] = {
    offsets64,
    {"offsets, int32", bag_layout::offsets, false, true, true},
    {"offsets, int32 indices, int64 offsets", bag_layout::offsets, false, true, false},
    {"offsets, int64 indices, int32 offsets", bag_layout::offsets, false, false, true},
    {"offsets + include_last_offset, int64", bag_layout::offsets, true, false, false},
    {"offsets + include_last_offset, int32", bag_layout::offsets, true, true, true},
    {"lengths, int64", bag_layout::lengths, false, false, false},
    {"lengths, int32", bag_layout::lengths, false, true, true},
    {"lengths, int32 indices, int64 lengths", bag_layout::lengths, false, true, false},
    {"2-D B x L, int64", bag_layout::fixed_length, false, false, false},
    {"2-D B x L, int32", bag_layout::fixed_length, false, true, false},
};

std::int64_t bag_end(const problem& p, std::size_t b) {
  return b + 1 < p.offsets.size() ? p.offsets[b + 1] : std::ssize(p.indices);
}

// Whether every bag has the same length (so the bags can be given as a 2-D B x L array).
bool uniform(const problem& p) {
  if (p.offsets.empty()) return false;
  for (std::size_t b = 0; b < p.offsets.size(); ++b)
    if (bag_end(p, b) - p.offsets[b] != bag_end(p, 0) || bag_end(p, 0) == 0) return false;
  return true;
}

// A problem's bags in one encoding; owns the arrays its `bags` points into.
class encoded_bags {
 public:
  encoded_bags(const problem& p, const encoding& e) : opts_(p.opts) {
    std::vector<std::int64_t> bounds;
    std::int64_t length = 0;
    switch (e.layout) {
      case bag_layout::offsets:
        bounds = p.offsets;
        if (e.include_last_offset) bounds.push_back(std::ssize(p.indices));
        break;
      case bag_layout::lengths:
        for (std::size_t b = 0; b < p.offsets.size(); ++b) bounds.push_back(bag_end(p, b) - p.offsets[b]);
        break;
      case bag_layout::fixed_length: length = bag_end(p, 0); break;
    }
    opts_.include_last_offset = e.include_last_offset;
    indices64_ = p.indices;
    indices32_.assign(p.indices.begin(), p.indices.end());
    bounds64_ = bounds;
    bounds32_.assign(bounds.begin(), bounds.end());
    const index_span ix = e.index32 ? index_span(indices32_) : index_span(indices64_);
    const index_span bd = e.boundary32 ? index_span(bounds32_) : index_span(bounds64_);
    batch_ = bags{ix, e.layout == bag_layout::fixed_length ? index_span{} : bd, e.layout, length, p.weights};
  }
  encoded_bags(const encoded_bags&) = delete;
  encoded_bags& operator=(const encoded_bags&) = delete;

  const bags& batch() const { return batch_; }
  const options& opts() const { return opts_; }

 private:
  options opts_;
  std::vector<std::int32_t> indices32_, bounds32_;
  std::vector<std::int64_t> indices64_, bounds64_;
  bags batch_;
};

// What a forward call left behind, in the variant's layout.
struct forward_run {
  std::int64_t hand_dim = 0, dim = 0, table_stride = 0, out_rows = 0, out_stride = 0;
  std::vector<float> table, out;
  std::vector<std::int64_t> argmax;  // out_rows x dim, mode max
};

// One expected result of a problem.
struct expectation {
  mode m;
  matrix out;
  index_matrix argmax = {};  // mode max
};

// ---------------------------------------------------------------------------------------------

class Semantics : public ::testing::TestWithParam<std::tuple<isa, shape>> {
 protected:
  isa which() const { return std::get<0>(GetParam()); }
  const shape& form() const { return std::get<1>(GetParam()); }

  // Forward on this variant's ISA and layout. Checks what every call must leave alone: the stride
  // gaps of output and table, and the whole table unless max_norm rescales it in place.
  forward_run run_raw(const matrix& table, const bags& batch, options opts) const {
    forward_run r;
    r.hand_dim = std::ssize(table.front());
    r.dim = r.hand_dim * form().tile;
    r.table_stride = r.dim + form().table_gap;
    r.table = tiled(table, r.hand_dim, form().tile, r.table_stride, NaN);
    const std::vector<float> table_before = r.table;
    opts.execution.isa = which();
    r.out_rows = output_rows(batch, opts);
    r.out_stride = r.dim + form().out_gap;
    r.out = canary_buffer(r.out_rows, r.out_stride);
    const std::vector<float> out_before = r.out;
    if (opts.mode == mode::max) r.argmax.assign(static_cast<std::size_t>(r.out_rows * r.dim), -7);
    embag::forward(table_view<float>{r.table.data(), std::ssize(table), r.dim, r.table_stride}, batch, opts,
                   matrix_view<float>{r.out.data(), r.out_rows, r.dim, r.out_stride}, r.argmax);
    EXPECT_TRUE(gaps_untouched(out_before, r.out, r.out_rows, r.dim, r.out_stride)) << "output";
    EXPECT_TRUE(gaps_untouched(table_before, r.table, std::ssize(table), r.dim, r.table_stride)) << "table";
    if (!(opts.max_norm && opts.max_norm_mode == max_norm_flavour::in_place)) {
      EXPECT_EQ(0, std::memcmp(table_before.data(), r.table.data(), r.table.size() * sizeof(float)))
          << "forward wrote the table";
    }
    return r;
  }

  forward_run run(const problem& p, const encoding& e = offsets64) const {
    const encoded_bags bags(p, e);
    return run_raw(p.table, bags.batch(), bags.opts());
  }

  void expect_out(const forward_run& r, const matrix& want, double tolerance = 0) const {
    ASSERT_EQ(r.out_rows, std::ssize(want)) << "output rows";
    EXPECT_TRUE(cells_match(want, r.hand_dim, r.out, r.dim, r.out_stride, tolerance)) << "output";
  }

  void expect_argmax(const forward_run& r, const index_matrix& want) const {
    EXPECT_TRUE(indices_match(want, r.hand_dim, r.argmax, r.dim)) << "argmax";
  }

  void expect_table(const forward_run& r, const matrix& want) const {
    EXPECT_TRUE(cells_match(want, r.hand_dim, r.table, r.dim, r.table_stride)) << "table after the call";
  }

  // Runs p in mode e.m and checks output and (mode max) argmax.
  void expect(problem p, const expectation& e, const encoding& enc = offsets64) const {
    SCOPED_TRACE("mode " + mode_name(e.m) + ", " + enc.name);
    p.opts.mode = e.m;
    const forward_run r = run(p, enc);
    expect_out(r, e.out);
    if (e.m == mode::max) expect_argmax(r, e.argmax);
  }
};

// The table most cases use: row r is T[r].
const matrix T = {{1, 2}, {3, -4}, {-5, 6}, {0.5f, -0.5f}, {7, -8}};

// Bags of 4, 2 and 1 indices, so means are exact.
const problem uneven{.table = T, .indices = {0, 1, 2, 4, /**/ 3, 4, /**/ 1}, .offsets = {0, 4, 6}};
const expectation uneven_results[] = {
    {mode::sum, {{6, -4}, {7.5f, -8.5f}, {3, -4}}},
    {mode::mean, {{1.5f, -1}, {3.75f, -4.25f}, {3, -4}}},
    {mode::max, {{7, 6}, {7, -0.5f}, {3, -4}}, {{4, 2}, {4, 3}, {1, 1}}},
    {mode::none, {{1, 2}, {3, -4}, {-5, 6}, {7, -8}, {0.5f, -0.5f}, {7, -8}, {3, -4}}},
};

// Three bags of two: also expressible as a 2-D 3 x 2 index array.
const problem pairs{.table = T, .indices = {0, 4, /**/ 2, 1, /**/ 3, 0}, .offsets = {0, 2, 4}};
const expectation pairs_results[] = {
    {mode::sum, {{8, -6}, {-2, 2}, {1.5f, 1.5f}}},
    {mode::mean, {{4, -3}, {-1, 1}, {0.75f, 0.75f}}},
    {mode::max, {{7, 2}, {3, 6}, {1, 2}}, {{4, 0}, {1, 2}, {0, 0}}},
    {mode::none, {{1, 2}, {7, -8}, {-5, 6}, {3, -4}, {0.5f, -0.5f}, {1, 2}}},
};

TEST_P(Semantics, ModesSumMeanMaxNone) {
  for (const expectation& e : uneven_results) expect(uneven, e);
}

TEST_P(Semantics, OffsetsLengthsAnd2DIndicesInInt32OrInt64GiveTheSameResult) {
  struct {
    const problem& p;
    std::span<const expectation> results;
  } cases[] = {{uneven, uneven_results}, {pairs, pairs_results}};
  for (const auto& c : cases) {
    ASSERT_EQ(uniform(c.p), &c.p == &pairs);
    for (const encoding& enc : encodings) {
      if (enc.layout == bag_layout::fixed_length && !uniform(c.p)) continue;
      for (const expectation& e : c.results) expect(c.p, e, enc);
    }
  }
}

TEST_P(Semantics, IncludeLastOffsetMakesTheLastOffsetTheEndOfTheLastBag) {
  const std::vector<std::int64_t> indices{0, 1, 2, 4, 3, 4, 1};
  const std::vector<std::int32_t> offsets{0, 4, 6, 7};
  const bags batch = bags::from_offsets(indices, offsets);
  options last = in_mode(mode::sum);
  last.include_last_offset = true;
  expect_out(run_raw(T, batch, last), {{6, -4}, {7.5f, -8.5f}, {3, -4}});
  // without it, the same 4 offsets start 4 bags, the last one empty
  expect_out(run_raw(T, batch, in_mode(mode::sum)), {{6, -4}, {7.5f, -8.5f}, {3, -4}, {0, 0}});
}

TEST_P(Semantics, EmptyBagsGiveZerosInEveryModeAndArgmaxMinusOne) {
  const problem middle_full{.table = T, .indices = {1, 4}, .offsets = {0, 0, 2}};  // [], [1 4], []
  const problem no_indices{.table = T, .indices = {}, .offsets = {0, 0}};
  const std::vector<float> weights{0.5f, 1.5f};
  struct {
    const problem& p;
    expectation e;
    bool weighted = false;
  } cases[] = {
      {middle_full, {mode::sum, {{0, 0}, {10, -12}, {0, 0}}}},
      {middle_full, {mode::mean, {{0, 0}, {5, -6}, {0, 0}}}},
      {middle_full, {mode::max, {{0, 0}, {7, -4}, {0, 0}}, {{-1, -1}, {4, 1}, {-1, -1}}}},
      {middle_full, {mode::sum, {{0, 0}, {12, -14}, {0, 0}}}, true},
      {middle_full, {mode::mean, {{0, 0}, {6, -7}, {0, 0}}}, true},
      {middle_full, {mode::sqrtn, {{0, 0}, {10 / std::sqrt(2.0f), -12 / std::sqrt(2.0f)}, {0, 0}}}},
      {middle_full, {mode::sqrtn, {{0, 0}, {12 / std::sqrt(2.5f), -14 / std::sqrt(2.5f)}, {0, 0}}}, true},
      {no_indices, {mode::sum, {{0, 0}, {0, 0}}}},
      {no_indices, {mode::mean, {{0, 0}, {0, 0}}}},
      {no_indices, {mode::max, {{0, 0}, {0, 0}}, {{-1, -1}, {-1, -1}}}},
      {no_indices, {mode::none, {}}},
      {no_indices, {mode::sqrtn, {{0, 0}, {0, 0}}}},
  };
  for (const auto& c : cases) {
    problem p = c.p;
    if (c.weighted) p.weights = weights;
    SCOPED_TRACE(c.weighted ? "weighted" : "unweighted");
    for (const encoding& enc : encodings)
      if (enc.layout != bag_layout::fixed_length) expect(p, c.e, enc);
  }
}

TEST_P(Semantics, PerSampleWeightsWithSumAndWithMean) {
  // A weighted mean is sum(w x) / sum(w), and 0 when sum(w) is 0 (bags 2 and 3).
  const problem p{.table = T,
                  .indices = {0, 1, 2, /**/ 4, 3, /**/ 0, 1, /**/ 2},
                  .offsets = {0, 3, 5, 7},
                  .weights = {2, 0.5f, -0.5f, /**/ 1, 3, /**/ 1, -1, /**/ 0}};
  expect(p, {mode::sum, {{6, -1}, {8.5f, -9.5f}, {-2, 6}, {0, 0}}});
  expect(p, {mode::mean, {{3, -0.5f}, {2.125f, -2.375f}, {0, 0}, {0, 0}}});
}

TEST_P(Semantics, AWeightedSumRoundsEachWeightTimesRowPlusTheSumOnce) {
  // acc = fma(w, x, acc): (1 + 2^-12)^2 - 1 is 2^-11 + 2^-24 rounded once; a product rounded
  // before the add loses the 2^-24 (a tie, to even), leaving 2^-11.
  const float a = 1 + 0x1p-12f;
  const problem p{.table = {{-1, 1}, {a, 3}}, .indices = {0, 1}, .offsets = {0}, .weights = {1, a}};
  expect(p, {mode::sum, {{0x1p-11f + 0x1p-24f, 4 + 0x3p-12f}}});
}

TEST_P(Semantics, SqrtnDividesTheSumByTheRootOfTheCountOrOfTheSquaredWeights) {
  // TensorFlow's sqrtn combiner: sum(w x) / sqrt(sum w^2), unweighted sum(x) / sqrt(count), 0
  // when that is 0. Bags of 4, 1 and 0 indices; weights (3, 4), (2, -1, 2) and (0).
  const problem unweighted{.table = T, .indices = {0, 1, 2, 4, /**/ 3}, .offsets = {0, 4, 5}};
  expect(unweighted, {mode::sqrtn, {{3, -2}, {0.5f, -0.5f}, {0, 0}}});
  const problem weighted{.table = T,
                         .indices = {0, 4, /**/ 1, 2, 3, /**/ 0},
                         .offsets = {0, 2, 5},
                         .weights = {3, 4, /**/ 2, -1, 2, /**/ 0}};
  expect(weighted, {mode::sqrtn, {{31 / 5.0f, -26 / 5.0f}, {4, -5}, {0, 0}}});
}

// Row 5 is the padding row in these cases: large, so any use of it would show.
const matrix T6 = {{1, 2}, {3, -4}, {-5, 6}, {0.5f, -0.5f}, {7, -8}, {100, 100}};

TEST_P(Semantics, PaddingIsSkippedInEveryModeAndLeftOutOfTheDivisors) {
  const problem base{.table = T6, .indices = {0, 5, 1, /**/ 5, 5, /**/ 2, 5}, .offsets = {0, 3, 5}};
  const std::vector<float> weights{1, 9, 3, /**/ 9, 9, /**/ -1, 9};
  struct {
    expectation e;
    bool weighted = false;
  } cases[] = {
      {{mode::sum, {{4, -2}, {0, 0}, {-5, 6}}}},
      {{mode::mean, {{2, -1}, {0, 0}, {-5, 6}}}},
      {{mode::max, {{3, 2}, {0, 0}, {-5, 6}}, {{1, 0}, {-1, -1}, {2, 2}}}},
      {{mode::none, {{1, 2}, {0, 0}, {3, -4}, {0, 0}, {0, 0}, {-5, 6}, {0, 0}}}},
      {{mode::sum, {{10, -10}, {0, 0}, {5, -6}}}, true},
      {{mode::mean, {{2.5f, -2.5f}, {0, 0}, {-5, 6}}}, true},
      {{mode::sqrtn, {{4 / std::sqrt(2.0f), -2 / std::sqrt(2.0f)}, {0, 0}, {-5, 6}}}},
      {{mode::sqrtn, {{10 / std::sqrt(10.0f), -10 / std::sqrt(10.0f)}, {0, 0}, {5, -6}}}, true},
  };
  for (const std::int64_t padding : {5, -1}) {
    SCOPED_TRACE("padding_idx " + std::to_string(padding));
    for (const auto& c : cases) {
      problem p = base;
      p.opts.padding_idx = padding;
      if (c.weighted) p.weights = weights;
      SCOPED_TRACE(c.weighted ? "weighted" : "unweighted");
      expect(p, c.e);
    }
  }
}

TEST_P(Semantics, NegativePaddingIdxCountsFromTheEnd) {
  // One bag of every row: the sum of all rows (106.5, 95.5) minus the padding row.
  const struct {
    std::int64_t padding;
    std::vector<float> sum;
  } cases[] = {{-6, {105.5f, 93.5f}}, {-5, {103.5f, 99.5f}}, {-4, {111.5f, 89.5f}},
               {-3, {106, 96}},       {-2, {99.5f, 103.5f}}, {-1, {6.5f, -4.5f}}};
  for (const auto& c : cases)
    for (const std::int64_t padding : {c.padding, c.padding + 6}) {
      SCOPED_TRACE("padding_idx " + std::to_string(padding));
      problem p{.table = T6, .indices = {0, 1, 2, 3, 4, 5}, .offsets = {0}};
      p.opts.padding_idx = padding;
      expect(p, {mode::sum, {c.sum}});
    }
}

TEST_P(Semantics, MaxIsPerDimensionTiesGoFirstNaNPropagatesFirstNaNWins) {
  const matrix rows = {
      {1, 5},      // 0
      {1, 2},      // 1
      {0, 5},      // 2
      {NaN, 3},    // 3
      {NaN, NaN},  // 4
      {-3, -1},    // 5
      {-2, -4},    // 6
  };
  const problem p{.table = rows,
                  .indices = {1, 0, 2, /**/ 0, 0, /**/ 0, 3, 2, /**/ 1, 3, 4, /**/ 3, 0, /**/ 5, 6},
                  .offsets = {0, 3, 5, 8, 11, 13}};
  expect(p, {mode::max,
             {{1, 5}, {1, 5}, {NaN, 5}, {NaN, NaN}, {NaN, 5}, {-2, -1}},
             {
                 {1, 0},  // ties: 1 before 0 in dimension 0, 0 before 2 in dimension 1
                 {0, 0},  // a repeated row
                 {3, 0},  // NaN beats 1 and is not beaten by the 0 after it
                 {3, 4},  // the first NaN of each dimension wins
                 {3, 0},  // a NaN first stays
                 {6, 5},  // all negative: the max is not started at 0
             }});
}

// The p-norm of a hand row tiled `tile` times, given the hand row's norm (tiles are perfect squares).
double tiled_norm(double hand_norm, float p, std::int64_t tile) {
  if (p == 1.0f) return hand_norm * double(tile);
  if (p == 2.0f) return hand_norm * std::sqrt(double(tile));
  return hand_norm;  // inf
}

float scale_for(double max_norm, double norm) { return static_cast<float>(max_norm / (norm + 1e-7)); }

std::vector<float> scaled(const std::vector<float>& row, float s) {
  std::vector<float> v;
  for (float x : row) v.push_back(x * s);
  return v;
}

TEST_P(Semantics, MaxNormScalesEveryReferencedRowAboveTheLimit) {
  // Row 0 is over the limit in every norm, row 1 under it, row 2 is the padding row (over the limit:
  // rescaled in place as torch does, but never in the output), row 3 is over but not referenced.
  const std::vector<float> A{3, 4}, B{0.125f, -0.0625f}, P{30, 40}, U{6, 8};
  const float M = 3.5f;
  const struct {
    float p;
    double norm_a, norm_p;  // of the hand rows
  } norms[] = {{1.0f, 7, 70}, {2.0f, 5, 50}, {Inf, 4, 40}};
  const std::int64_t tile = form().tile;
  for (const auto& n : norms)
    for (const max_norm_flavour flavour : {max_norm_flavour::clip, max_norm_flavour::in_place})
      for (const mode m : {mode::none, mode::sum}) {
        SCOPED_TRACE("norm_type " + std::to_string(n.p) + (flavour == max_norm_flavour::clip ? " clip" : " in_place") +
                     " mode " + mode_name(m));
        problem p{.table = {A, B, P, U}, .indices = {0, 1, 0, 2, /**/ 2}, .offsets = {0, 4}};
        p.opts = with_max_norm(m, M, n.p, flavour);
        p.opts.padding_idx = 2;
        const std::vector<float> a = scaled(A, scale_for(M, tiled_norm(n.norm_a, n.p, tile)));
        const std::vector<float> pad = scaled(P, scale_for(M, tiled_norm(n.norm_p, n.p, tile)));
        const forward_run r = run(p);
        if (m == mode::none) {
          expect_out(r, {a, B, a, {0, 0}, {0, 0}});
        } else {
          expect_out(r, {{2 * a[0] + B[0], 2 * a[1] + B[1]}, {0, 0}}, 1e-6);
        }
        expect_table(r, flavour == max_norm_flavour::clip ? matrix{A, B, P, U} : matrix{a, B, pad, U});
      }
}

TEST_P(Semantics, MaxNormScaleIsMaxNormOverNormPlus1e7) {
  // A norm small enough that the 1e-7 matters: the row is 2^-22 (3, 4), max_norm 2^-22 2.5.
  const float unit = std::ldexp(1.0f, -22);
  const std::vector<float> row{3 * unit, 4 * unit};
  const double norm = tiled_norm(5 * unit, 2.0f, form().tile), max_norm = 2.5 * unit;
  const float s = scale_for(max_norm, norm);
  ASSERT_NE(s, static_cast<float>(max_norm / norm)) << "the case does not tell the 1e-7 apart";
  const problem p{.table = {row},
                  .indices = {0},
                  .offsets = {0},
                  .opts = with_max_norm(mode::none, float(max_norm), 2.0f, max_norm_flavour::clip)};
  expect_out(run(p), {scaled(row, s)});
}

TEST_P(Semantics, InPlaceMaxNormAndRenormRowsRescaleEachDistinctRowOnce) {
  // Row 1 (inf-norm 21) is listed three times. Rescaled once it is 0.75000006 in column 0, still
  // over max_norm 0.75: a second pass would shrink it again. Row 2 sits exactly at the limit and
  // row 0, over it, is not listed: both stay.
  const float M = 0.75f;
  const matrix table = {{8, 0}, {21, -7}, {0.5f, -0.75f}};
  const float s = scale_for(M, 21);
  const std::vector<float> once = scaled(table[1], s);
  ASSERT_GT(once[0], M);
  ASSERT_NE(once[0] * scale_for(M, once[0]), once[0]) << "rescaling twice would not show";
  const matrix want = {table[0], once, table[2]};

  const std::int64_t d = 2, dim = d * form().tile, stride = dim + form().table_gap;
  std::vector<float> t = tiled(table, d, form().tile, stride, NaN);
  const std::vector<std::int32_t> rows{1, 2, 1, 1};
  renorm_rows({t.data(), 3, dim, stride}, rows, M, Inf);
  EXPECT_TRUE(cells_match(want, d, t, dim, stride)) << "renorm_rows";

  const problem p{.table = table,
                  .indices = {1, 2, 1, 1},
                  .offsets = {0},
                  .opts = with_max_norm(mode::sum, M, Inf, max_norm_flavour::in_place)};
  const forward_run r = run(p);
  expect_table(r, want);
  expect_out(r, {{3 * once[0] + 0.5f, 3 * once[1] - 0.75f}}, 1e-6);
}

TEST_P(Semantics, OutputRowStrideLetsTablesWriteSideBySide) {
  // Two tables (D1 = 2 tile, D2 = tile) write their sums into one buffer of row stride
  // D1 + D2 + gap: each into its own columns, the gap untouched.
  const matrix narrow = {{10}, {20}, {40}};
  const std::vector<std::int64_t> indices{0, 1, 2};
  const std::vector<std::int64_t> offsets{0, 2};
  const bags batch = bags::from_offsets(indices, offsets);
  const std::int64_t tile = form().tile, d1 = 2 * tile, d2 = tile, stride = d1 + d2 + form().out_gap + 1;
  const std::vector<float> t1 = tiled(T, 2, tile, d1, NaN), t2 = tiled(narrow, 1, tile, d2, NaN);
  std::vector<float> out = canary_buffer(2, stride);
  const std::vector<float> before = out;
  options opts;
  opts.execution.isa = which();
  embag::forward(table_view<const float>{t1.data(), 5, d1, 0}, batch, opts, {out.data(), 2, d1, stride});
  embag::forward(table_view<const float>{t2.data(), 3, d2, 0}, batch, opts, {out.data() + d1, 2, d2, stride});
  EXPECT_TRUE(cells_match({{4, -2}, {-5, 6}}, 2, out, d1, stride)) << "first table's columns";
  const std::vector<float> second(out.begin() + d1, out.end());
  EXPECT_TRUE(cells_match({{30}, {40}}, 1, second, d2, stride)) << "second table's columns";
  EXPECT_TRUE(gaps_untouched(before, out, 2, d1 + d2, stride));
}

TEST_P(Semantics, RuleBreakingCallsAreErrorsThatWriteNothing) {
  const std::vector<std::int64_t> indices{0, 1, 2, 4, 3, 4, 1};
  const std::vector<std::int64_t> short_of_the_end{0, 4, 6};  // index 6 is trailing
  const std::vector<std::int64_t> starts{0, 4, 6};
  const std::vector<float> weights(7, 1.0f);
  options include_last, padding_r, padding_minus_r_minus_1;
  include_last.include_last_offset = true;
  padding_r.padding_idx = 5;
  padding_minus_r_minus_1.padding_idx = -6;
  const struct {
    const char* what;
    bags batch;
    options opts;
    errc code;
  } cases[] = {
      {"include_last_offset with the last offset short of len(indices)", bags::from_offsets(indices, short_of_the_end),
       include_last, errc::bad_offsets},
      {"per_sample_weights with max", bags::from_offsets(indices, starts, weights), in_mode(mode::max),
       errc::invalid_option},
      {"padding_idx = R", bags::from_offsets(indices, starts), padding_r, errc::invalid_option},
      {"padding_idx = -R - 1", bags::from_offsets(indices, starts), padding_minus_r_minus_1, errc::invalid_option},
  };
  const std::int64_t dim = 2 * form().tile, stride = dim + form().table_gap;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    std::vector<float> table = tiled(T, 2, form().tile, stride, NaN);
    const std::vector<float> table_before = table;
    std::vector<float> out = canary_buffer(3, dim), out_before = out;
    std::vector<std::int64_t> argmax(c.opts.mode == mode::max ? 3 * dim : 0, -7);
    options opts = c.opts;
    opts.execution.isa = which();
    try {
      embag::forward(table_view<float>{table.data(), 5, dim, stride}, c.batch, opts, {out.data(), 3, dim, 0}, argmax);
      ADD_FAILURE() << "no error";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), c.code) << e.what();
    }
    EXPECT_EQ(out, out_before);
    EXPECT_EQ(0, std::memcmp(table.data(), table_before.data(), table.size() * sizeof(float)));
    EXPECT_TRUE(std::all_of(argmax.begin(), argmax.end(), [](std::int64_t a) { return a == -7; }));
  }
  // -R is the first row, in range
  options first_row;
  first_row.padding_idx = -5;
  expect_out(run_raw(T, bags::from_offsets(indices, starts), first_row), {{5, -6}, {7.5f, -8.5f}, {3, -4}});
}

INSTANTIATE_TEST_SUITE_P(EveryIsa, Semantics, ::testing::Combine(::testing::ValuesIn(available_isas()), ::testing::ValuesIn(shapes)),
                         [](const auto& info) {
                           return std::string(to_string(std::get<0>(info.param))) + "_" + std::get<1>(info.param).name;
                         });

// Each weighted term is fma(w, x, acc), one correctly rounded operation on every ISA (SSE2 emulates
// it in double): bags of two, row c with weight 1 (acc = c) then row x with weight w, compared
// with std::fma column by column. The triples include sums that a double rounds onto a float
// midpoint (then rounded to float a second time, they go the wrong way), signed zeros, subnormals,
// overflow, infinities and NaN, and random ones.
TEST(Rounding, EveryWeightedTermIsOneCorrectlyRoundedFmaOnEveryIsa) {
  constexpr std::int64_t dim = 19;  // no ISA's lanes divide it: each row's last batch overlaps the one before
  constexpr float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  struct triple {
    float w, x, c;
  };
  std::vector<triple> bags_of_one_triple = {
      {1 + 0x1p-12f, 1 + 0x1p-12f, -1},  // 2^-11 + 2^-24; rounding the product first loses the 2^-24
      {0x1p-100f, 0x1.8p-49f, 0x1p-149f},  // subnormal
      {-0.0f, 1, 0},  {0, -1, -0.0f}, {inf, 0, 1},    {inf, 1, -inf}, {nan, 1, 1},
      {1, 1, nan},    {3e38f, 3e38f, 1}, {-3e38f, 3e38f, inf}, {0x1p127f, 2, -0x1p127f}};
  std::mt19937 g(11);
  const auto uniform = [&](float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(g); };
  // w x = 2^-24 (1 + a 2^-23) (1 - 2a 2^-24) = 2^-24 - a^2 2^-70, just short of half an ulp of c in
  // [1, 2): the double sum is the midpoint, the exact one is not
  for (int a = 1; a <= 64; ++a) {
    const float c = 1 + static_cast<float>(2 * static_cast<int>(g() % (1 << 21)) + 1) * 0x1p-23f;  // odd significand
    const float w = (1 + static_cast<float>(a) * 0x1p-23f) * 0x1p-24f, x = 1 - static_cast<float>(2 * a) * 0x1p-24f;
    bags_of_one_triple.push_back({w, x, c});
    bags_of_one_triple.push_back({-w, x, c});
    bags_of_one_triple.push_back({-w, x, -c});
  }
  const std::int64_t random_bags = 200, bags_count = std::ssize(bags_of_one_triple) + random_bags;
  std::vector<float> table(static_cast<std::size_t>(2 * bags_count * dim)), weights;
  std::vector<std::int64_t> indices, offsets;
  for (std::int64_t b = 0; b < bags_count; ++b) {
    const bool crafted = b < std::ssize(bags_of_one_triple);
    const float w = crafted ? bags_of_one_triple[b].w : std::ldexp(uniform(-1, 1), static_cast<int>(g() % 41) - 20);
    for (std::int64_t d = 0; d < dim; ++d) {
      table[(2 * b) * dim + d] = crafted ? bags_of_one_triple[b].c : std::ldexp(uniform(-1, 1), static_cast<int>(g() % 41) - 20);
      table[(2 * b + 1) * dim + d] = crafted ? bags_of_one_triple[b].x : std::ldexp(uniform(-1, 1), static_cast<int>(g() % 41) - 20);
    }
    offsets.push_back(2 * b);
    indices.insert(indices.end(), {2 * b, 2 * b + 1});
    weights.insert(weights.end(), {1.0f, w});
  }
  for (isa which : available_isas()) {
    options opts;
    opts.mode = mode::sum;
    opts.execution.isa = which;
    std::vector<float> out(static_cast<std::size_t>(bags_count * dim));
    forward(table_view<const float>{table.data(), 2 * bags_count, dim, 0}, bags::from_offsets(indices, offsets, weights),
            opts, {out.data(), bags_count, dim, 0});
    int wrong = 0;
    for (std::int64_t b = 0; b < bags_count; ++b)
      for (std::int64_t d = 0; d < dim; ++d) {
        const float c = table[(2 * b) * dim + d], x = table[(2 * b + 1) * dim + d], w = weights[2 * b + 1];
        const float want = std::fma(w, x, std::fma(1.0f, c, 0.0f)), got = out[b * dim + d];
        const bool same = std::isnan(want) ? std::isnan(got) : std::bit_cast<std::uint32_t>(want) == std::bit_cast<std::uint32_t>(got);
        if (!same && wrong++ < 3)
          ADD_FAILURE() << to_string(which) << ": bag " << b << " column " << d << ": fma(" << std::hexfloat << w << ", " << x
                        << ", " << c << ") = " << want << ", got " << got << std::defaultfloat;
      }
    EXPECT_EQ(wrong, 0) << to_string(which);
  }
}

}  // namespace
}  // namespace embag::test
