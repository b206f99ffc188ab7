// The element types of stored tables, one entry each: the short name, the row size and the scalar
// encode and decode of the layouts in include/embag/quantize.hpp. Validation, quantize and
// dequantize, the reference, the .embag file, the C ABI and the tool read a dtype's facts here;
// the SIMD kernels (src/kernels/rows.hpp) reproduce decode bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "embag/embag.hpp"

namespace embag::detail {

// Why a row cannot be stored, at which column.
struct row_problem {
  std::int64_t column = 0;
  const char* reason = "";
};

struct format {
  dtype type;
  std::string_view short_name;  // accepted by dtype_from_string beside to_string(type) ("" when none)
  std::int64_t element_bits;    // per element, packed (int4: two to a byte, the low nibble first)
  std::int64_t trailer_bytes;   // after a row's elements: its scale and bias
  // x[0..dim) stored at out (row bytes), or why the row cannot be stored
  std::optional<row_problem> (*encode)(const float* x, std::int64_t dim, std::byte* out);
  // out[0..dim) = the fp32 values of the stored row
  void (*decode)(const std::byte* row, std::int64_t dim, float* out) noexcept;
};

// The format of `type`, or null when `type` is no dtype (a C caller's integer, a file's code).
const format* format_of(dtype type) noexcept;

// The bytes of one packed row of `dim` elements, or nothing past max_array_bytes.
std::optional<std::int64_t> packed_row_bytes(const format& f, std::int64_t dim) noexcept;

// format_of(type)->decode, for a type validation has checked.
void decode_row(dtype type, const std::byte* row, std::int64_t dim, float* out) noexcept;

}  // namespace embag::detail
