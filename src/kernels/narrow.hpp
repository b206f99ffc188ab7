// 16-bit float outputs: rows of fp32 results rounded once to nearest even into fp16 or bf16
// (request.hpp's output_narrowing), bit for bit what the scalar codecs of src/formats/halves.cpp
// give, which the reference uses. F16C, AVX-512F and NEON round fp16 in hardware (quiet NaNs keep
// their payload's top bits, as the codec does); bf16 is integer arithmetic on the fp32 bits.
#pragma once

#include <bit>
#include <cstdint>

#include "kernels/rows.hpp"

namespace embag::detail {
std::uint16_t f16_from_float(float x) noexcept;  // src/formats/halves.cpp: the scalar rounding
}  // namespace embag::detail

namespace embag::detail::EMBAG_ISA_NS {

template <class Arch>
inline void narrow_to_f16(const float* x, std::int64_t n, std::uint16_t* out) noexcept {
  std::int64_t d = 0;
#if defined(__x86_64__) || defined(__i386__)
  constexpr int nearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  if constexpr (is_avx512<Arch>)
    for (; d + 16 <= n; d += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + d), _mm512_cvtps_ph(_mm512_loadu_ps(x + d), nearest));
  else if constexpr (is_avx2<Arch>)
    for (; d + 8 <= n; d += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + d), _mm256_cvtps_ph(_mm256_loadu_ps(x + d), nearest));
#elif defined(__aarch64__)
  for (; d + 4 <= n; d += 4) vst1_u16(out + d, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + d))));
#endif
  for (; d < n; ++d) out[d] = f16_from_float(x[d]);  // SSE2, and the tails
}

// Nearest even by adding 0x7fff plus the kept part's lowest bit; a NaN keeps its top bits, made
// quiet (a payload only in the dropped bits must not become Inf). Branch-free: the loop vectorises.
template <class Arch>
inline void narrow_to_bf16(const float* x, std::int64_t n, std::uint16_t* out) noexcept {
  for (std::int64_t d = 0; d < n; ++d) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(x[d]);
    const std::uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16, quiet = (bits >> 16) | 0x40u;
    out[d] = static_cast<std::uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
  }
}

// rows x dim results (dense, at stage) into rows [first_row, first_row + rows) of the output.
template <class Arch>
void narrow_rows(const float* stage, std::int64_t rows, std::int64_t dim, const output_narrowing& to,
                 std::int64_t first_row) {
  auto* const out = reinterpret_cast<std::uint16_t*>(to.data);
  for (std::int64_t r = 0; r < rows; ++r) {
    std::uint16_t* const row = out + (first_row + r) * to.stride;
    if (to.type == dtype::f16) narrow_to_f16<Arch>(stage + r * dim, dim, row);
    else narrow_to_bf16<Arch>(stage + r * dim, dim, row);
  }
}

}  // namespace embag::detail::EMBAG_ISA_NS
