// Runs one case through every entry point on one ISA and keeps everything it wrote.
#pragma once

#include "support/cases.hpp"

namespace embag::test {

struct call_results {
  std::vector<float> out;              // out_rows x out_stride, canary-filled before the call
  std::vector<std::int64_t> argmax;    // mode max
  std::vector<float> out_without_argmax;  // mode max: the same forward, not asked for argmax
  std::vector<float> table_after;      // the table after forward (in-place max_norm writes it)
  std::vector<float> grad_output;      // the dY used for backward
  std::vector<float> dense_grad;       // rows x dim, started from grad_start
  sparse_gradient sparse;
  std::vector<float> weights_grad;     // with per-sample weights, modes sum and mean
};

// The dY of a case: out_rows x dim, seeded from the case.
std::vector<float> grad_output_for(const call_case& c);
// Non-zero start of the dense gradient, to check it accumulates.
std::vector<float> grad_start_for(const call_case& c);

// Forward, then backward dense and sparse, then the weights gradient, all run as `how` says.
call_results run_case(const call_case& c, const execution& how);
// The same on `which` with max_threads.
call_results run_case(const call_case& c, isa which, int max_threads);

}  // namespace embag::test
