// libFuzzer target: the fuzzer's bytes decoded into a whole call (tools/fuzz/differential.hpp),
// run on the reference and every ISA of this CPU. Built twice: EMBAG_FUZZ_OPERATION is forward
// (both overloads) or backward (dense, sparse, per-sample-weights gradient).
#include <cstdio>
#include <cstdlib>

#include "fuzz/differential.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  embag::fuzz::byte_choices source(data, size);
  const embag::fuzz::fuzz_call call = embag::fuzz::draw_fuzz_call(source);
  const embag::fuzz::verdict v = embag::fuzz::check_call(call, embag::fuzz::operation::EMBAG_FUZZ_OPERATION);
  if (v.mismatch) {
    std::fprintf(stderr, "MISMATCH: %s\n  call: %s\n", v.mismatch->c_str(), call.recipe.c_str());
    std::abort();
  }
  return 0;
}
