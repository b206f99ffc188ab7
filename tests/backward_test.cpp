// Hand-written cases pinning the backward half of DESIGN.md section 2, on every ISA this CPU has:
// backward_dense (accumulates into the caller's buffer), backward_sparse (sorted unique rows,
// coalesced, padding absent, contents replaced on reuse), per_sample_weights_grad, max through the
// argmax forward produced, padding, scale_grad_by_freq, and modes none and mean.
//
// Every case has d = 2 hand columns of small dyadic numbers, so every expected value is exact. As
// in semantics_test, each case also runs tiled (hand column c repeated over columns c, c + 2, ...
// up to D = 18 or 32, the kernels' vector loops and tails) and strided: dY's row gaps hold NaN (a
// read would poison the result), the dense gradient's row gaps a canary (a write would show).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "support/cases.hpp"

namespace embag::test {
namespace {

const float NaN = std::numeric_limits<float>::quiet_NaN();
constexpr float canary = -12345.0f;

using matrix = std::vector<std::vector<float>>;  // hand-written, rows x 2
using index_matrix = std::vector<std::vector<std::int64_t>>;
constexpr std::int64_t d = 2;  // hand columns

struct shape {
  const char* name;
  std::int64_t tile;     // D = tile * d
  std::int64_t in_gap;   // row_stride - D of dY and the table; gap cells NaN
  std::int64_t out_gap;  // row_stride - D of the dense gradient; gap cells canary
};

std::ostream& operator<<(std::ostream& os, const shape& s) { return os << s.name; }

const shape shapes[] = {
    {"narrow", 1, 0, 0}, {"narrow_strided", 1, 3, 2}, {"tiled9_strided", 9, 1, 5}, {"tiled16", 16, 0, 0},
    {"tiled16_strided", 16, 2, 3},
};

// The hand-written matrix m, each column repeated `tile` times, rows `stride` apart, gaps `gap`.
std::vector<float> tiled(const matrix& m, std::int64_t tile, std::int64_t stride, float gap) {
  const std::int64_t rows = std::ssize(m), dim = d * tile;
  std::vector<float> v(static_cast<std::size_t>(std::max<std::int64_t>(rows * stride, 1)), gap);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < dim; ++c) v[r * stride + c] = m[r][c % d];
  return v;
}

// got (rows x D, rows `stride` apart) holds the tiled `want`, exactly.
::testing::AssertionResult cells_match(const matrix& want, const std::vector<float>& got, std::int64_t dim,
                                       std::int64_t stride) {
  if (std::ssize(got) < (std::ssize(want) - 1) * stride + dim && !want.empty())
    return ::testing::AssertionFailure() << "only " << got.size() << " values";
  int wrong = 0;
  std::ostringstream first;
  for (std::int64_t r = 0; r < std::ssize(want); ++r)
    for (std::int64_t c = 0; c < dim; ++c) {
      const float w = want[r][c % d], g = got[r * stride + c];
      if (g != w && wrong++ == 0) first << "[" << r << "][" << c << "] = " << g << ", want " << w;
    }
  if (wrong > 0) return ::testing::AssertionFailure() << wrong << " cells differ, first " << first.str();
  return ::testing::AssertionSuccess();
}

struct encoding {
  const char* name;
  bag_layout layout;
  bool index32, boundary32;
};

const encoding encodings[] = {
    {"offsets, int64", bag_layout::offsets, false, false},
    {"offsets, int32", bag_layout::offsets, true, true},
    {"lengths, int32 indices, int64 lengths", bag_layout::lengths, true, false},
};

// Bags given by hand as indices and bag starts, in one encoding; owns the arrays its `bags` uses.
class encoded_bags {
 public:
  encoded_bags(const std::vector<std::int64_t>& indices, const std::vector<std::int64_t>& starts,
               const std::vector<float>& weights, const encoding& e) {
    std::vector<std::int64_t> bounds = starts;
    if (e.layout == bag_layout::lengths)
      for (std::size_t b = 0; b < starts.size(); ++b)
        bounds[b] = (b + 1 < starts.size() ? starts[b + 1] : std::ssize(indices)) - starts[b];
    indices64_ = indices;
    indices32_.assign(indices.begin(), indices.end());
    bounds64_ = bounds;
    bounds32_.assign(bounds.begin(), bounds.end());
    const index_span ix = e.index32 ? index_span(indices32_) : index_span(indices64_);
    const index_span bd = e.boundary32 ? index_span(bounds32_) : index_span(bounds64_);
    weights_ = weights;
    batch_ = bags{ix, bd, e.layout, 0, weights_};
  }
  encoded_bags(const encoded_bags&) = delete;
  encoded_bags& operator=(const encoded_bags&) = delete;
  const bags& batch() const { return batch_; }

 private:
  std::vector<std::int32_t> indices32_, bounds32_;
  std::vector<std::int64_t> indices64_, bounds64_;
  std::vector<float> weights_;
  bags batch_;
};

options make_options(mode m, std::optional<std::int64_t> padding = {}, bool freq = false) {
  options o;
  o.mode = m;
  o.padding_idx = padding;
  o.scale_grad_by_freq = freq;
  return o;
}

constexpr std::int64_t R = 6;  // table rows in every case

// Where the dense gradient starts: non-zero, so accumulation shows.
matrix start() {
  matrix s;
  for (std::int64_t r = 0; r < R; ++r) s.push_back({100.0f + r, -100.0f - r});
  return s;
}

// start + times * delta, cell by cell.
matrix accumulated(const matrix& delta, float times = 1) {
  matrix m = start();
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < d; ++c) m[r][c] += times * delta[r][c];
  return m;
}

matrix rows_of(const matrix& m, const std::vector<std::int64_t>& rows) {
  matrix out;
  for (std::int64_t r : rows) out.push_back(m[r]);
  return out;
}

// ---------------------------------------------------------------------------------------------

class Backward : public ::testing::TestWithParam<std::tuple<isa, shape>> {
 protected:
  isa which() const { return std::get<0>(GetParam()); }
  const shape& form() const { return std::get<1>(GetParam()); }
  std::int64_t dim() const { return d * form().tile; }
  std::int64_t in_stride() const { return dim() + form().in_gap; }
  std::int64_t grad_stride() const { return dim() + form().out_gap; }

  options on_isa(options o) const {
    o.execution.isa = which();
    return o;
  }

  // dY in this variant's layout: tiled, rows in_stride() apart, NaN in the gaps.
  std::vector<float> dy_buffer(const matrix& dy) const { return tiled(dy, form().tile, in_stride(), NaN); }
  matrix_view<const float> dy_view(const std::vector<float>& buffer, const matrix& dy) const {
    return {buffer.data(), std::ssize(dy), dim(), in_stride()};
  }

  // backward_dense `calls` times into a gradient that starts at start(); checks its gaps.
  std::vector<float> dense(const bags& batch, const options& opts, const matrix& dy,
                           std::span<const std::int64_t> argmax = {}, int calls = 1) const {
    const std::vector<float> g = dy_buffer(dy);
    std::vector<float> grad = tiled(start(), form().tile, grad_stride(), canary);
    const std::vector<float> before = grad;
    for (int i = 0; i < calls; ++i)
      backward_dense(batch, on_isa(opts), dy_view(g, dy), {grad.data(), R, dim(), grad_stride()}, argmax);
    EXPECT_TRUE(gaps_untouched(before, grad, R, dim(), grad_stride())) << "dense gradient";
    return grad;
  }

  void sparse(const bags& batch, const options& opts, const matrix& dy, sparse_gradient& grad,
              std::span<const std::int64_t> argmax = {}) const {
    const std::vector<float> g = dy_buffer(dy);
    backward_sparse(R, batch, on_isa(opts), dy_view(g, dy), grad, argmax);
  }

  void expect_dense(const std::vector<float>& grad, const matrix& delta, float times = 1) const {
    EXPECT_TRUE(cells_match(accumulated(delta, times), grad, dim(), grad_stride())) << "dense gradient";
  }

  void expect_sparse(const sparse_gradient& grad, const std::vector<std::int64_t>& rows, const matrix& delta) const {
    EXPECT_EQ(grad.rows, rows) << "sparse rows";
    EXPECT_EQ(grad.dim, dim());
    EXPECT_EQ(std::ssize(grad.values), std::ssize(rows) * dim());
    EXPECT_TRUE(cells_match(rows_of(delta, rows), grad.values, dim(), dim())) << "sparse values";
  }

  // A sparse gradient full of junk, so a result that merely appends or keeps old rows shows.
  static sparse_gradient junk() { return {{7, 9, 11}, std::vector<float>(40, 31.0f), 99}; }
};

struct backward_case {
  const char* name = "";
  mode m = mode::sum;
  std::vector<std::int64_t> indices = {}, offsets = {};
  matrix dy = {};                       // one row per bag (per index in mode none)
  matrix delta = {};                    // R rows: what backward adds to each table row
  std::vector<std::int64_t> rows = {};  // the sparse gradient's rows
  std::vector<float> weights = {};
  std::optional<std::int64_t> padding = {};
  bool freq = false;
};

const backward_case cases[] = {
    {.name = "sum",
     .indices = {0, 1, /**/ 1, 3, 3, 2},
     .offsets = {0, 2},
     .dy = {{1, -2}, {4, 8}},
     .delta = {{1, -2}, {5, 6}, {4, 8}, {8, 16}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2, 3}},
    {.name = "mean divides by the bag size",
     .m = mode::mean,
     .indices = {0, 1, /**/ 1, 3, 3, 2},
     .offsets = {0, 2},
     .dy = {{1, -2}, {4, 8}},
     .delta = {{0.5f, -1}, {1.5f, 1}, {1, 2}, {2, 4}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2, 3}},
    {.name = "sqrtn divides by the root of the bag size",
     .m = mode::sqrtn,
     .indices = {0, /**/ 1, 3, 3, 2},
     .offsets = {0, 1},
     .dy = {{1, -2}, {4, 8}},
     .delta = {{1, -2}, {2, 4}, {2, 4}, {4, 8}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2, 3}},
    {.name = "weighted sqrtn divides by the root of the sum of the squared weights",
     .m = mode::sqrtn,
     .indices = {0, 1, /**/ 1, 3, 3, 2},
     .offsets = {0, 2},
     .dy = {{1, -2}, {4, 8}},
     .delta = {{1, -2}, {2, 4}, {2, 4}, {0, 0}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2, 3},
     .weights = {2, 0, /**/ 1, -1, 1, 1}},
    {.name = "weighted sqrtn whose weights are all 0 passes no gradient",
     .m = mode::sqrtn,
     .indices = {0, 1, /**/ 2},
     .offsets = {0, 2},
     .dy = {{1, -2}, {4, 8}},
     .delta = {{0, 0}, {0, 0}, {4, 8}, {0, 0}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2},
     .weights = {0, 0, /**/ 2}},
    {.name = "none: one dY row per index",
     .m = mode::none,
     .indices = {0, 1, 1, 3, 3, 2},
     .offsets = {0, 2},
     .dy = {{1, 10}, {2, 20}, {3, 30}, {4, 40}, {5, 50}, {6, 60}},
     .delta = {{1, 10}, {5, 50}, {6, 60}, {9, 90}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2, 3}},
    {.name = "weighted sum",
     .indices = {0, 1, /**/ 1, 3, 3, 2},
     .offsets = {0, 2},
     .dy = {{1, -2}, {4, 8}},
     .delta = {{2, -4}, {1, 6}, {0, 0}, {14, 28}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2, 3},  // row 2 has weight 0 but is referenced
     .weights = {2, -1, /**/ 0.5f, 1, 2.5f, 0}},
    {.name = "weighted mean divides by the sum of the bag's weights",
     .m = mode::mean,
     .indices = {0, 1, /**/ 1, 3, 3, 2},
     .offsets = {0, 2},
     .dy = {{1, -2}, {4, 8}},
     .delta = {{2, -4}, {-0.5f, 3}, {0, 0}, {3.5f, 7}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2, 3},
     .weights = {2, -1, /**/ 0.5f, 1, 2.5f, 0}},
    {.name = "weighted mean whose weights sum to 0 passes no gradient",
     .m = mode::mean,
     .indices = {0, 1, /**/ 2},
     .offsets = {0, 2},
     .dy = {{1, -2}, {4, 8}},
     .delta = {{0, 0}, {0, 0}, {4, 8}, {0, 0}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2},
     .weights = {1, -1, /**/ 2}},
    {.name = "padding row gets nothing (sum)",
     .indices = {0, 5, 1, /**/ 5, 5, /**/ 2, 5},
     .offsets = {0, 3, 5},
     .dy = {{1, -2}, {3, 3}, {4, 8}},
     .delta = {{1, -2}, {1, -2}, {4, 8}, {0, 0}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2},
     .padding = 5},
    {.name = "padding left out of the mean divisor, padding_idx -1",
     .m = mode::mean,
     .indices = {0, 5, 1, /**/ 5, 5, /**/ 2, 5},
     .offsets = {0, 3, 5},
     .dy = {{1, -2}, {3, 3}, {4, 8}},
     .delta = {{0.5f, -1}, {0.5f, -1}, {4, 8}, {0, 0}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2},
     .padding = -1},
    {.name = "padding weight left out of the weighted mean divisor",
     .m = mode::mean,
     .indices = {0, 5, 1, /**/ 5, 5, /**/ 2, 5},
     .offsets = {0, 3, 5},
     .dy = {{1, -2}, {3, 3}, {4, 8}},
     .delta = {{0.25f, -0.5f}, {0.75f, -1.5f}, {4, 8}, {0, 0}, {0, 0}, {0, 0}},
     .rows = {0, 1, 2},
     .weights = {1, 9, 3, /**/ 9, 9, /**/ -1, 9},
     .padding = 5},
    {.name = "padding in mode none",
     .m = mode::none,
     .indices = {0, 5, 1},
     .offsets = {0},
     .dy = {{1, -2}, {3, 3}, {4, 8}},
     .delta = {{1, -2}, {4, 8}, {0, 0}, {0, 0}, {0, 0}, {0, 0}},
     .rows = {0, 1},
     .padding = 5},
    {.name = "scale_grad_by_freq: row 0 three times over two bags",
     .indices = {0, 1, 0, /**/ 0, 2},
     .offsets = {0, 3},
     .dy = {{3, 6}, {6, -3}},
     .delta = {{4, 3}, {3, 6}, {6, -3}, {0, 0}, {0, 0}, {0, 0}},  // row 0: 2 (3, 6) / 3 + (6, -3) / 3
     .rows = {0, 1, 2},
     .freq = true},
    {.name = "scale_grad_by_freq with mean",
     .m = mode::mean,
     .indices = {0, 1, /**/ 0, 0, 2, 3},
     .offsets = {0, 2},
     .dy = {{6, 12}, {12, -24}},
     .delta = {{3, -2}, {3, 6}, {3, -6}, {3, -6}, {0, 0}, {0, 0}},  // row 0: (6, 12) / 2 / 3 + 2 (12, -24) / 4 / 3
     .rows = {0, 1, 2, 3},
     .freq = true},
    {.name = "scale_grad_by_freq counts no padding",
     .indices = {0, 5, 0, /**/ 5, 0},
     .offsets = {0, 3},
     .dy = {{3, 6}, {6, -3}},
     .delta = {{4, 3}, {0, 0}, {0, 0}, {0, 0}, {0, 0}, {0, 0}},
     .rows = {0},
     .padding = 5,
     .freq = true},
    {.name = "scale_grad_by_freq in mode none",
     .m = mode::none,
     .indices = {0, 1, 0, 0},
     .offsets = {0},
     .dy = {{3, 3}, {6, 6}, {9, 0}, {3, -3}},
     // row 0: c = fl(1/3) = (1 + 2^-24) / 3, each term added rounded once: fma(c, 3, 0) = 1, fma(c, 0, 1) = 1,
     // then fma(c, -3, 1) = 1 - (1 + 2^-25) = -2^-25 exactly (products rounded apart would cancel to 0)
     .delta = {{5, -0x1p-25f}, {6, 6}, {0, 0}, {0, 0}, {0, 0}, {0, 0}},
     .rows = {0, 1},
     .freq = true},
};

TEST_P(Backward, DenseAccumulatesAndSparseGivesSortedUniqueRows) {
  for (const backward_case& c : cases) {
    SCOPED_TRACE(c.name);
    ASSERT_EQ(std::ssize(c.delta), R);
    for (std::int64_t r = 0; r < R; ++r)  // a row outside the sparse gradient has no gradient
      if (std::find(c.rows.begin(), c.rows.end(), r) == c.rows.end()) {
        ASSERT_EQ(c.delta[r], std::vector<float>(d, 0.0f));
      }
    for (const encoding& e : encodings) {
      SCOPED_TRACE(e.name);
      const encoded_bags bags(c.indices, c.offsets, c.weights, e);
      const options opts = make_options(c.m, c.padding, c.freq);
      expect_dense(dense(bags.batch(), opts, c.dy), c.delta);
      sparse_gradient grad = junk();
      sparse(bags.batch(), opts, c.dy, grad);
      expect_sparse(grad, c.rows, c.delta);
    }
  }
}

TEST_P(Backward, DenseAddsOnEachCallSparseReplacesItsContents) {
  const backward_case& first = cases[0];  // rows 0 1 2 3
  const encoded_bags bags(first.indices, first.offsets, {}, encodings[0]);
  expect_dense(dense(bags.batch(), options{}, first.dy, {}, 2), first.delta, 2);

  sparse_gradient grad = junk();
  sparse(bags.batch(), options{}, first.dy, grad);
  expect_sparse(grad, first.rows, first.delta);
  const encoded_bags one_row({4}, {0}, {}, encodings[0]);
  sparse(one_row.batch(), options{}, {{1, -1}}, grad);
  expect_sparse(grad, {4}, {{0, 0}, {0, 0}, {0, 0}, {0, 0}, {1, -1}, {0, 0}});
}

// A table too tall for the row transpose's one-word sort entries (62 bits of row, and 3 of each
// entry's tag: its bag, of 8 one-index bags; or its position, of 8 weighted ones): rows sorted and
// summed as in any table, with no row read.
TEST_P(Backward, SparseRowsOfATableTooTallForOneWordEntries) {
  constexpr std::int64_t rows = std::int64_t{1} << 62, top = rows - 1, third = rows / 3;
  const std::vector<std::int64_t> indices{top, 5, third, 5, /**/ top, 0, third, 7};
  const auto check = [&](const encoded_bags& bags, const matrix& dy, const matrix& expected) {
    const std::vector<float> g = dy_buffer(dy);
    sparse_gradient grad = junk();
    backward_sparse(rows, bags.batch(), on_isa(options{}), dy_view(g, dy), grad);
    EXPECT_EQ(grad.rows, (std::vector<std::int64_t>{0, 5, 7, third, top}));
    EXPECT_TRUE(cells_match(expected, grad.values, dim(), dim())) << "sparse values";
  };
  check(encoded_bags(indices, {0, 1, 2, 3, 4, 5, 6, 7}, {}, encodings[0]),
        {{1, 2}, {3, 4}, {5, 6}, {7, 8}, {9, 10}, {11, 12}, {13, 14}, {15, 16}},
        {{11, 12}, {10, 12}, {15, 16}, {18, 20}, {10, 12}});
  check(encoded_bags(indices, {0, 4}, {1, 1, 1, 1, 2, 1, 1, 1}, encodings[0]), {{1, 2}, {10, 20}},
        {{10, 20}, {2, 4}, {10, 20}, {11, 22}, {21, 42}});
}

TEST_P(Backward, MaxSendsEachDimensionsGradientToTheRowThatWonIt) {
  const matrix table = {
      {1, 5},      // 0
      {1, 2},      // 1
      {0, 5},      // 2
      {-3, -1},    // 3
      {-2, -4},    // 4
      {100, 100},  // 5, padding
  };
  const std::vector<std::int64_t> indices{1, 0, 2, /**/ 0, 0, 3, /**/ 3, 4, 5, /**/ 5};
  const std::vector<std::int64_t> offsets{0, 3, 6, 9};
  const index_matrix winners = {
      {1, 0},    // ties go to the first occurrence
      {0, 0},    // row 0 twice in the bag: it gets dY once
      {4, 3},    // the padding row's 100s do not take part
      {-1, -1},  // only padding
  };
  const matrix dy = {{1, 3}, {6, 9}, {16, 32}, {64, 128}};
  const struct {
    bool freq;
    matrix delta;
  } variants[] = {
      {false, {{6, 12}, {1, 0}, {0, 0}, {0, 32}, {16, 0}, {0, 0}}},
      // counts over the call: row 0 three times, row 3 twice, rows 1, 2, 4 once
      {true, {{2, 4}, {1, 0}, {0, 0}, {0, 16}, {16, 0}, {0, 0}}},
  };
  const std::vector<std::int64_t> rows{0, 1, 2, 3, 4};  // row 2 took part, won nothing

  const std::vector<float> t = tiled(table, form().tile, in_stride(), NaN);
  for (const encoding& e : encodings) {
    SCOPED_TRACE(e.name);
    const encoded_bags bags(indices, offsets, {}, e);
    for (const auto& v : variants) {
      SCOPED_TRACE(v.freq ? "scale_grad_by_freq" : "plain");
      const options opts = make_options(mode::max, 5, v.freq);
      std::vector<float> out(static_cast<std::size_t>(4 * dim()));
      std::vector<std::int64_t> argmax(out.size(), -7);
      embag::forward(table_view<const float>{t.data(), R, dim(), in_stride()}, bags.batch(), on_isa(opts),
              {out.data(), 4, dim(), dim()}, argmax);
      ASSERT_EQ(std::ssize(argmax), 4 * dim());
      for (std::int64_t b = 0; b < 4; ++b)
        for (std::int64_t c = 0; c < dim(); ++c)
          ASSERT_EQ(argmax[b * dim() + c], winners[b][c % d]) << "argmax[" << b << "][" << c << "]";

      expect_dense(dense(bags.batch(), opts, dy, argmax), v.delta);
      sparse_gradient grad = junk();
      sparse(bags.batch(), opts, dy, grad, argmax);
      expect_sparse(grad, rows, v.delta);
    }
  }
}

TEST_P(Backward, PerSampleWeightsGradient) {
  // sum: <dY[bag], W[idx]>; weighted mean: (<dY, x_j> - sum_i w_i <dY, x_i> / S) / S, S = the bag's
  // weight sum without padding; sqrtn: (<dY, x_j> - (w_j / N) sum_i w_i <dY, x_i> / N) / N, N the
  // root of the bag's sum of squared weights; 0 when S or N is 0; padding entries 0. Every dot
  // product of tiled rows is `tile` times the hand-written one.
  const matrix table = {{1, 2}, {3, -4}, {-5, 6}, {0.5f, -0.5f}, {7, -8}, {100, 100}};
  const std::vector<std::int64_t> indices{0, 1, 5, /**/ 2, 4, /**/ 0, 1};
  const std::vector<std::int64_t> offsets{0, 3, 5};
  const std::vector<float> weights{2, -1, 9, /**/ 0.5f, 1.5f, /**/ 1, -1};
  const matrix dy = {{1, -2}, {2, 0.5f}, {1, 1}};
  // the dot products <dY, x_j>: -3, 11, (padding), -7, 10, 3, -1
  const struct {
    mode m;
    std::vector<float> hand;  // for one tile
    std::vector<float> weights = {};  // when not `weights`
  } expected[] = {
      {mode::sum, {-3, 11, 0, /**/ -7, 10, /**/ 3, -1}},
      // bag 0: S = 1, sum w<dY,x> = -17; bag 1: S = 2, sum w<dY,x> / S = 5.75; bag 2: S = 0
      {mode::mean, {14, 28, 0, /**/ -6.375f, 2.125f, /**/ 0, 0}},
      // bag 0: N = 2, sum w<dY,x> / N = -3; bag 1: N = 2, sum w<dY,x> / N = -10; bag 2: N = 0
      {mode::sqrtn, {0, 5.5f, 0, /**/ -3.5f, 0, /**/ 0, 0}, {2, 0, 9, /**/ 0, -2, /**/ 0, 0}},
  };
  const std::vector<float> t = tiled(table, form().tile, in_stride(), NaN);
  const std::vector<float> g = dy_buffer(dy);
  for (const encoding& e : encodings) {
    SCOPED_TRACE(e.name);
    for (const auto& x : expected) {
      SCOPED_TRACE(to_string(x.m));
      const encoded_bags bags(indices, offsets, x.weights.empty() ? weights : x.weights, e);
      std::vector<float> grad(indices.size(), 999.0f);
      per_sample_weights_grad({t.data(), R, dim(), in_stride()}, bags.batch(), on_isa(make_options(x.m, 5)),
                              dy_view(g, dy), grad);
      for (std::size_t j = 0; j < grad.size(); ++j)
        EXPECT_EQ(grad[j], x.hand[j] * static_cast<float>(form().tile)) << "grad_weights[" << j << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(EveryIsa, Backward, ::testing::Combine(::testing::ValuesIn(available_isas()), ::testing::ValuesIn(shapes)),
                         [](const auto& info) {
                           return std::string(to_string(std::get<0>(info.param))) + "_" + std::get<1>(info.param).name;
                         });

}  // namespace
}  // namespace embag::test
