// A C++ consumer of the installed library: the C++ API and the C header in one program.
#include <embag/embag.h>
#include <embag/embag.hpp>

#include <cstdio>
#include <utility>
#include <vector>

int main() {
  embag::table table(1000, 64);
  std::vector<std::int64_t> indices = {3, 7, 7, 42, 5};
  std::vector<std::int64_t> offsets = {0, 3};
  std::vector<float> out(2 * 64, -1.0f);
  embag::options opts;
  opts.mode = embag::mode::mean;
  embag::forward(std::as_const(table).view(), embag::bags::from_offsets(indices, offsets), opts,
                 {out.data(), 2, 64});
  std::printf("embag %s (ABI %d): out[0] = %g\n", embag_version(), embag_abi_version(), out[0]);
  return out[0] == 0.0f && embag_abi_version() == EMBAG_ABI_VERSION ? 0 : 1;
}
