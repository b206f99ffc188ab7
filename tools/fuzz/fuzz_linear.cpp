// libFuzzer target: the scalar reference against the Linear (one-hot matmul) view of the seeds, on
// small calls the fuzzer's bytes describe: the check tests/differential_test.cpp runs on seeded
// calls (tests/support/linear.hpp), steered by coverage instead.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "fuzz/differential.hpp"
#include "support/linear.hpp"
#include "support/run.hpp"

namespace {

using embag::fuzz::fuzz_call;

// The Linear view is exact arithmetic: NaN, Inf, overflow and underflow (a product with a denormal
// weight keeps a few bits; dividing by a tiny mean divisor magnifies them) are the differential
// targets' business, which compare the ISAs bit for bit there.
bool moderate(const std::vector<float>& values) {
  for (float v : values)
    if (!(std::fabs(v) < 1e6f) || (v != 0.0f && std::fabs(v) < 1e-6f)) return false;
  return true;
}

embag::test::call_case as_case(const fuzz_call& f) {
  embag::test::call_case c;
  c.seed = 1;
  c.rows = f.rows;
  c.dim = f.dim;
  c.row_stride = f.row_stride == 0 ? f.dim : f.row_stride;
  c.table = f.table;
  c.index32 = f.index32;
  c.boundary32 = f.boundary32;
  c.indices32 = f.indices32;
  c.indices64 = f.indices64;
  c.boundaries32 = f.boundaries32;
  c.boundaries64 = f.boundaries64;
  c.layout = f.layout;
  c.fixed_length = f.fixed_length;
  c.weights = f.weights;
  c.opts = f.opts;
  c.out_stride = std::max(f.out_stride, f.dim);  // the run allocates rows x out_stride; 0 means dim
  c.indices = f.indices64;
  c.bag_begin = embag::fuzz::bag_starts(f);
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  embag::fuzz::byte_choices source(data, size);
  const fuzz_call call = embag::fuzz::draw_call(source, {.max_rows = 40, .max_dim = 24, .max_bags = 6, .max_bag_length = 8});
  if (call.null_indices || !moderate(call.table) || !moderate(call.weights)) return 0;
  // only calls validation accepts: a malformed one is the differential targets' business
  const std::int64_t out_rows = std::max<std::int64_t>(embag::output_rows(call.batch(), call.opts), 0);
  std::vector<float> out(static_cast<std::size_t>(out_rows * call.dim));
  std::vector<std::int64_t> argmax(call.opts.mode == embag::mode::max ? out.size() : 0);
  try {
    embag::forward(embag::table_view<const float>{call.table.data(), call.rows, call.dim, call.row_stride}, call.batch(),
                   call.opts, {out.data(), out_rows, call.dim, call.dim}, argmax);
  } catch (const embag::error&) {
    return 0;
  }
  const embag::test::call_case c = as_case(call);
  embag::test::call_results r;
  try {
    r = embag::test::run_case(c, embag::isa::reference, 1);
  } catch (const embag::error&) {
    return 0;
  }
  if (const auto agrees = embag::test::agrees_with_linear(c, r); !agrees) {
    std::fprintf(stderr, "MISMATCH with Linear: %s\n  call: %s\n", agrees.message(), call.recipe.c_str());
    std::abort();
  }
  return 0;
}
