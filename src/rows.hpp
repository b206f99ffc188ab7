// The scalar decode of one stored row (layouts in include/embag/quantize.hpp): what each element
// type's values are. dequantize and the reference read rows through it; the SIMD kernels
// (src/kernels/rows.hpp) reproduce it bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "embag/embag.hpp"

namespace embag::detail {

// out[0..dim) = the fp32 values of the row at `row`.
void decode_row(dtype type, const std::byte* row, std::int64_t dim, float* out) noexcept;

}  // namespace embag::detail
