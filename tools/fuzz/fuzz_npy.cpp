// libFuzzer target: the .npy parser on arbitrary bytes (npy_array::from_bytes, the parse open()
// runs on a mapped file). Every input is either rejected with errc::bad_file, or accepted with a
// shape whose product is the element count and data the views can read to the end.
#include <cstdio>
#include <cstdlib>
#include <span>

#include "embag/npy.hpp"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "npy parser: %s\n", what);
  std::abort();
}

// Reads every element (AddressSanitizer catches a view past the data): each is stored to a
// volatile, which the compiler cannot drop; no arithmetic on them (a sum of int32 elements
// overflowed, undefined behaviour UBSan stops at).
template <class T>
void read_all(const void* data, std::int64_t elements) {
  [[maybe_unused]] volatile T sink{};  // written only: the stores are the point
  for (std::int64_t i = 0; i < elements; ++i) sink = static_cast<const T*>(data)[i];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const embag::npy_array a =
        embag::npy_array::from_bytes(std::as_bytes(std::span(data, size)), "fuzz.npy");
    std::int64_t product = 1;
    for (std::int64_t d : a.shape()) {
      if (d < 0) fail("a negative dimension was accepted");
      product *= d;  // cannot overflow: the parser checked the byte count
    }
    if (product != a.elements()) fail("elements() is not the product of the shape");
    switch (a.dtype()) {
      case embag::npy_dtype::f32: read_all<float>(a.as_floats().data(), a.elements()); break;
      case embag::npy_dtype::i32: read_all<std::int32_t>(a.data(), a.elements()); break;
      case embag::npy_dtype::i64: read_all<std::int64_t>(a.data(), a.elements()); break;
      case embag::npy_dtype::f16: read_all<std::uint16_t>(a.data(), a.elements()); break;
    }
    if (a.shape().size() == 2 && a.dtype() == embag::npy_dtype::f32) {
      const embag::table_view<const float> t = a.as_table();
      if (t.rows * t.dim != a.elements()) fail("as_table() disagrees with the shape");
    }
  } catch (const embag::error& e) {
    if (e.code() != embag::errc::bad_file) fail("an error other than bad_file");
  }
  return 0;
}
