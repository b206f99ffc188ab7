// libFuzzer target: the scalar reference against the Linear (one-hot matmul) view of the seeds, on
// small calls the fuzzer's bytes describe: the check tests/differential_test.cpp runs on seeded
// calls (tests/support/linear.hpp), through the same draw (fuzz/random_call.hpp), steered by
// coverage instead. The draw is valid and free of NaN, Inf and overflow, which the Linear view (exact
// arithmetic) cannot follow: the differential targets compare the ISAs bit for bit there.
#include <cstdio>
#include <cstdlib>

#include "fuzz/random_call.hpp"
#include "support/linear.hpp"
#include "support/run.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  embag::fuzz::byte_choices source(data, size);
  const embag::fuzz::call_case c =
      embag::fuzz::draw_call(source, {.max_dim = 24, .max_rows = 40, .max_bags = 6, .max_bag_length = 8});
  const embag::test::call_results r = embag::test::run_case(c, embag::isa::reference, 1);
  if (const auto agrees = embag::test::agrees_with_linear(c, r); !agrees) {
    std::fprintf(stderr, "MISMATCH with Linear: %s\n  call: %s\n", agrees.message(), c.describe().c_str());
    std::abort();
  }
  return 0;
}
