// Seeded random calls for the differential tests: a table, bags and options covering the whole
// option space, and the buffers a call writes, with a one-line description that reproduces it.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "embag/embag.hpp"

namespace embag::test {

struct call_case {
  std::uint64_t seed = 0;
  std::int64_t rows = 0, dim = 0, row_stride = 0;
  std::vector<float> table;  // rows x row_stride
  bool index32 = false, boundary32 = false;
  std::vector<std::int32_t> indices32, boundaries32;
  std::vector<std::int64_t> indices64, boundaries64;
  bag_layout layout = bag_layout::offsets;
  std::int64_t fixed_length = 0;
  std::vector<float> weights;
  options opts;
  std::int64_t out_stride = 0;  // >= dim

  // Plain copies, whatever the stored types: what tests and the Linear reference read.
  std::vector<std::int64_t> indices;
  std::vector<std::int64_t> bag_begin;  // B + 1 entries

  table_view<const float> view() const { return {table.data(), rows, dim, row_stride}; }
  table_view<float> mutable_view() { return {table.data(), rows, dim, row_stride}; }
  bags batch() const;
  std::int64_t num_bags() const { return static_cast<std::int64_t>(bag_begin.size()) - 1; }
  std::int64_t out_rows() const { return opts.mode == mode::none ? static_cast<std::int64_t>(indices.size()) : num_bags(); }
  std::int64_t padding() const;  // normalised, or -1
  std::string describe() const;
};

struct case_limits {
  std::int64_t max_dim = 300;
  std::int64_t max_rows = 400;
  std::int64_t max_bags = 12;
  std::int64_t max_bag_length = 24;
  bool allow_max_norm = true;
  bool allow_nan = false;  // NaN in some table cells (max must propagate it)
};

// A random valid call drawn from `seed`.
call_case random_case(std::uint64_t seed, const case_limits& limits = {});

// A call with bag lengths given explicitly, for hand-written tests.
call_case make_case(std::int64_t rows, std::int64_t dim, const std::vector<std::int64_t>& indices,
                    const std::vector<std::int64_t>& offsets, options opts = {}, std::uint64_t seed = 1);

// An output buffer (rows x stride) filled with a canary pattern, so unwritten cells are visible.
std::vector<float> canary_buffer(std::int64_t rows, std::int64_t stride);

// Bitwise equality (any NaN equal to any NaN) of two float buffers over the written cells (rows x dim of a stride), with the
// first difference reported.
::testing::AssertionResult same_bits(const std::vector<float>& expected, const std::vector<float>& actual,
                                     std::int64_t rows, std::int64_t dim, std::int64_t stride);

// Every cell outside the rows x dim block of a stride (the gaps, and anything past the last row)
// is bitwise what it was before the call.
::testing::AssertionResult gaps_untouched(const std::vector<float>& before, const std::vector<float>& after,
                                          std::int64_t rows, std::int64_t dim, std::int64_t stride);

}  // namespace embag::test
