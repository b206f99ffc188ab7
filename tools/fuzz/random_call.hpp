// The one generator of random calls: the differential tests draw from a seed, the fuzzers from
// their input's bytes, through the same draw. It makes valid calls only; the fuzzers add their
// malformations, compressed storage and dY on top (fuzz/differential.hpp). No gtest here: the
// embag command links it.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "embag/embag.hpp"

namespace embag::fuzz {

// Where a call's choices come from.
class choices {
 public:
  virtual ~choices() = default;
  std::int64_t below(std::int64_t n);                      // [0, n), n >= 1
  std::int64_t between(std::int64_t lo, std::int64_t hi);  // [lo, hi]
  bool chance(std::int64_t times, std::int64_t out_of) { return below(out_of) < times; }
  bool one_in(std::int64_t n) { return chance(1, n); }

 protected:
  virtual std::uint64_t take(int bytes) = 0;  // `bytes` bytes' worth of bits
};

class seeded_choices final : public choices {
 public:
  explicit seeded_choices(std::uint64_t seed) : generator_(seed) {}

 private:
  std::uint64_t take(int bytes) override;
  std::mt19937_64 generator_;
};

// The fuzzer's input, read front to back; zeros once it runs out, so every input decodes.
class byte_choices final : public choices {
 public:
  byte_choices(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

 private:
  std::uint64_t take(int bytes) override;
  const std::uint8_t* data_;
  std::size_t size_;
};

// One call, owned: the table, the bags as the caller stores them, the options and the output's
// row stride.
struct call_case {
  std::optional<std::uint64_t> seed;  // what random_call drew it from (or make_case's table)
  std::int64_t rows = 0, dim = 0, row_stride = 0;
  std::vector<float> table;  // rows x row_stride
  // Indices and boundaries (offsets or lengths, as the layout says; none for fixed_length) in
  // 64 bits, which is what the tests read, and narrowed to 32 bits: which width batch() passes is
  // the call's choice. Edit the 64-bit ones, then copy_to_32_bits().
  std::vector<std::int64_t> indices, boundaries;
  std::vector<std::int32_t> indices32, boundaries32;
  bool index32 = false, boundary32 = false;
  bag_layout layout = bag_layout::offsets;
  std::int64_t fixed_length = 0;
  std::vector<float> weights;
  options opts;
  std::int64_t out_stride = 0;  // >= dim

  void copy_to_32_bits();
  table_view<const float> view() const { return {table.data(), rows, dim, row_stride}; }
  table_view<float> mutable_view() { return {table.data(), rows, dim, row_stride}; }
  bags batch() const;
  std::int64_t num_bags() const;
  // Where each bag starts, B + 1 entries (the last is the number of indices).
  std::vector<std::int64_t> bag_starts() const;
  std::int64_t out_rows() const { return opts.mode == mode::none ? std::ssize(indices) : num_bags(); }
  std::int64_t padding() const;  // padding_idx made non-negative, or -1
  std::string describe() const;  // every parameter on one line (not the values)
};

struct call_limits {
  std::int64_t max_dim = 300;
  std::int64_t max_rows = 400;
  std::int64_t max_bags = 12;
  std::int64_t max_bag_length = 24;
  int max_threads = 0;  // execution.max_threads is drawn from [0, max_threads]
  bool allow_max_norm = true;
  bool allow_nan = false;  // NaN in some table cells (max must propagate it)
};

// A valid call, every option drawn: widths 16 to 256 and any other, few rows (repeats, ties),
// padded row and output strides, every mode, index width, layout, weights, padding index,
// max_norm flavour and prefetch setting.
call_case draw_call(choices& source, const call_limits& limits = {});
// draw_call on choices seeded with `seed`, which the call keeps.
call_case random_call(std::uint64_t seed, const call_limits& limits = {});

// The generator of a call's bulk values (table cells, weights, raw bytes), seeded by one choice: a
// fuzzer's input stays short and still steers the rest of the call.
std::mt19937 bulk_generator(choices& source);
// `count` normal values from a bulk generator.
std::vector<float> normal_values(choices& source, std::int64_t count);

}  // namespace embag::fuzz
