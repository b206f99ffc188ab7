// Compiles the public header on its own (meson builds this with -Werror) and the README's example.
#include "embag/embag.hpp"

#include <utility>
#include <vector>

int main() {
  embag::table table(1000, 64);
  std::vector<std::int64_t> indices = {3, 7, 7, 42, 5};  // two bags: {3, 7, 7} and {42, 5}
  std::vector<std::int64_t> offsets = {0, 3};
  std::vector<float> out(2 * 64);
  embag::options opts;
  opts.mode = embag::mode::mean;
  embag::forward(std::as_const(table).view(), embag::bags::from_offsets(indices, offsets), opts,
                 {out.data(), 2, 64});
  return out[0] == 0.0f ? 0 : 1;
}
