// libFuzzer target: the .embag parser on arbitrary bytes (compressed_table::from_bytes, the parse
// open() runs on a mapped file). Every input is either rejected with errc::bad_file, or accepted
// with a shape and row size that agree with its dtype, and rows dequantize reads to the end.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

#include "embag/quantize.hpp"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "embag parser: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const embag::compressed_table t =
        embag::compressed_table::from_bytes(std::as_bytes(std::span(data, size)), "fuzz.embag");
    const embag::compressed_table_view v = t.view();
    if (v.rows < 0 || v.dim <= 0) fail("a negative row count or a non-positive dim was accepted");
    if (t.row_bytes() != embag::row_bytes(v.element_type, v.dim)) fail("row bytes disagree with dtype and dim");
    std::int64_t data_bytes = 0;
    if (__builtin_mul_overflow(v.rows, t.row_bytes(), &data_bytes) || data_bytes > static_cast<std::int64_t>(size))
      fail("more rows than the file holds");
    if (t.mapped()) fail("from_bytes returned a mapped table");
    // Every row through dequantize, a few rows at a time (AddressSanitizer catches a read past the
    // copy; the values themselves may be anything, NaN included). With rows, dim is bounded by the
    // input's size.
    constexpr std::int64_t rows_at_once = 16;
    std::vector<float> out(static_cast<std::size_t>(std::min(rows_at_once, v.rows) * v.dim));
    embag::execution one_thread;
    one_thread.max_threads = 1;
    for (std::int64_t r = 0; r < v.rows; r += rows_at_once) {
      embag::compressed_table_view part = v;
      part.data = v.data + r * t.row_bytes();
      part.rows = std::min(rows_at_once, v.rows - r);
      embag::dequantize(part, {out.data(), part.rows, v.dim, 0}, one_thread);
    }
  } catch (const embag::error& e) {
    if (e.code() != embag::errc::bad_file) fail("an error other than bad_file");
  }
  return 0;
}
