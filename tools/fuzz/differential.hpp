// Differential fuzzing: a whole call (table, bags, options, possibly malformed) drawn from a
// source of choices (fuzz/random_call.hpp), run on the reference and on every ISA this CPU has,
// with the invariants checked: all reject it with the same error code and write nothing, or all
// accept it and agree.
// One piece serves `embag fuzz` (choices from a seeded generator) and the libFuzzer targets
// (choices from the fuzzer's bytes).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "embag/embag.hpp"
#include "embag/quantize.hpp"
#include "fuzz/random_call.hpp"

namespace embag::fuzz {

enum class operation { forward, backward };

// A drawn call as the fuzzer passes it: the valid call of the shared draw (fuzz/random_call.hpp)
// with a few extreme values in its table and weights, maybe one malformation, its rows stored
// compressed too, and a dY.
struct fuzz_call {
  call_case call;
  bool null_indices = false;       // indices passed as a null pointer with their length
  std::int64_t out_rows = 0;       // as the caller sizes the output (maybe wrongly)
  std::vector<float> grad_output;  // out_rows x dim
  // The table's rows stored in element_type (quantised from call.table, or raw bytes), row r at
  // stored.data() + stored_offset + r * stored_stride: what forward on a compressed table reads.
  dtype element_type = dtype::f32;
  std::vector<std::byte> stored;
  std::int64_t stored_offset = 0, stored_stride = 0;
  std::string recipe;  // the call's parameters and the layers', one line

  bags batch() const;  // call.batch(), with null indices when the call says so
  compressed_table_view compressed() const;
};

// The fuzzers' calls: smaller than the tests' (each runs on every ISA, forward and backward), on
// tables with NaN cells, asking for up to 4 threads.
constexpr call_limits fuzz_limits{.max_dim = 140, .max_rows = 300, .max_threads = 4, .allow_nan = true};

// A call drawn from `source`; about a third carry one malformation (named in the recipe).
fuzz_call draw_fuzz_call(choices& source);

// What went wrong, or nothing: every ISA against the reference, for the operation's entry points
// (forward: the fp32 overloads and the compressed table; backward: dense, sparse and the
// per-sample-weights gradient).
struct verdict {
  bool rejected = false;  // validation refused the call (alike everywhere)
  std::optional<std::string> mismatch;
};
verdict check_call(const fuzz_call& call, operation op);

}  // namespace embag::fuzz
