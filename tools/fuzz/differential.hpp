// Differential fuzzing: a whole call (table, bags, options, possibly malformed) drawn from a
// source of choices, run on the reference and on every ISA this CPU has, with the invariants
// checked: all reject it with the same error code and write nothing, or all accept it and agree.
// One piece serves `embag fuzz` (choices from a seeded generator) and the libFuzzer targets
// (choices from the fuzzer's bytes).
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "embag/embag.hpp"
#include "embag/quantize.hpp"

namespace embag::fuzz {

// Where a call's choices come from.
class choices {
 public:
  virtual ~choices() = default;
  std::int64_t below(std::int64_t n);                  // [0, n), n >= 1
  std::int64_t between(std::int64_t lo, std::int64_t hi);  // [lo, hi]
  bool one_in(std::int64_t n) { return below(n) == 0; }
  float value();  // mostly normal-ish, sometimes NaN, +-Inf, a denormal, -0 or huge

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

enum class operation { forward, backward };

// One drawn call: everything the entry points take, owned.
struct fuzz_call {
  std::int64_t rows = 0, dim = 0, row_stride = 0;
  std::vector<float> table;  // rows x row_stride
  bool index32 = false, boundary32 = false;
  std::vector<std::int32_t> indices32, boundaries32;
  std::vector<std::int64_t> indices64, boundaries64;
  bool null_indices = false;  // indices passed as a null pointer with their length
  bag_layout layout = bag_layout::offsets;
  std::int64_t fixed_length = 0;
  std::vector<float> weights;
  options opts;
  std::int64_t out_rows = 0, out_stride = 0;  // as the caller sizes the output (maybe wrongly)
  std::vector<float> grad_output;              // out_rows x dim
  // The table's rows stored in element_type (quantised from `table`, or raw bytes), row r at
  // stored.data() + stored_offset + r * stored_stride: what forward on a compressed table reads.
  dtype element_type = dtype::f32;
  std::vector<std::byte> stored;
  std::int64_t stored_offset = 0, stored_stride = 0;
  std::string recipe;  // the parameters, one line

  bags batch() const;
  compressed_table_view compressed() const;
};

// Where each bag starts, B + 1 entries (the last is len(indices)); for a call validation accepts.
std::vector<std::int64_t> bag_starts(const fuzz_call& call);

struct call_limits {
  std::int64_t max_rows = 300, max_dim = 140, max_bags = 12, max_bag_length = 24;
  int max_threads = 4;
};

// A call drawn from `source`; about a third carry one malformation (named in the recipe).
fuzz_call draw_call(choices& source, const call_limits& limits = {});

// What went wrong, or nothing: every ISA against the reference, for the operation's entry points
// (forward: the fp32 overloads and the compressed table; backward: dense, sparse and the
// per-sample-weights gradient).
struct verdict {
  bool rejected = false;  // validation refused the call (alike everywhere)
  std::optional<std::string> mismatch;
};
verdict check_call(const fuzz_call& call, operation op);

}  // namespace embag::fuzz
