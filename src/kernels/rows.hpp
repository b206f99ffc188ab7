// Table rows as fp32 batches, whatever their element type: the dequantisation forward does inside
// its loop (layouts in include/embag/quantize.hpp). Each element becomes exactly the fp32 value the
// scalar decode in src/formats/ gives: fp16 and bf16 widen exactly, the rowwise formats compute
// float(q) * scale + bias as one fused multiply-add, rounded once (fused_multiply_add). So a kernel
// reading a compressed table agrees bit for bit with the fp32 reference on the dequantised table.
//
// The widening uses each ISA's instructions: AVX-512F, F16C and NEON convert fp16 (exactly, whatever
// the denormal flags); SSE2 widens it with integer operations; the integer types widen with each
// ISA's zero extensions.
#pragma once

#include <bit>
#include <cmath>
#include <cstring>

#include "kernels/common.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace embag::detail::EMBAG_ISA_NS {

template <class T>
inline T load_bytes(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// fp16 bits to fp32 with integer operations and one exact int-to-float conversion (a subnormal
// fp16 is fraction x 2^-24, normal in fp32), so the host's denormal flags cannot change it.
inline float float_from_f16_bits(std::uint16_t h) noexcept {
  const std::uint32_t sign = std::uint32_t{h & 0x8000u} << 16, exponent = (h >> 10) & 0x1fu, fraction = h & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | fraction << 13);
  if (exponent == 0) return std::bit_cast<float>(sign | std::bit_cast<std::uint32_t>(static_cast<float>(fraction) * 0x1p-24f));
  return std::bit_cast<float>(sign | (exponent + 127 - 15) << 23 | fraction << 13);
}

inline float float_from_bf16_bits(std::uint16_t b) noexcept { return std::bit_cast<float>(std::uint32_t{b} << 16); }

// lanes fp16 values at p.
template <class Arch>
inline xsimd::batch<float, Arch> widen_f16(const std::byte* p) noexcept {
#if defined(__x86_64__) || defined(__i386__)
  if constexpr (is_avx512<Arch>)
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  else if constexpr (is_avx2<Arch>)
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  else if constexpr (is_sse2<Arch>) {  // float_from_f16_bits, four lanes at a time
    const __m128i h = _mm_unpacklo_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), _mm_setzero_si128());
    const __m128i sign = _mm_slli_epi32(_mm_and_si128(h, _mm_set1_epi32(0x8000)), 16);
    const __m128i magnitude = _mm_and_si128(h, _mm_set1_epi32(0x7fff));
    // normal: rebias the exponent by 127 - 15; Inf and NaN: by 255 - 31, to an all-ones exponent
    const __m128i inf_or_nan = _mm_cmpgt_epi32(magnitude, _mm_set1_epi32(0x7bff));
    const __m128i rebias = _mm_add_epi32(_mm_set1_epi32(112 << 23), _mm_and_si128(inf_or_nan, _mm_set1_epi32(112 << 23)));
    const __m128i normal = _mm_add_epi32(_mm_slli_epi32(magnitude, 13), rebias);
    // zero or subnormal: fraction x 2^-24, exact
    const __m128i subnormal = _mm_castps_si128(_mm_mul_ps(_mm_cvtepi32_ps(magnitude), _mm_set1_ps(0x1p-24f)));
    const __m128i is_subnormal = _mm_cmplt_epi32(magnitude, _mm_set1_epi32(0x0400));
    const __m128i bits = _mm_or_si128(_mm_and_si128(is_subnormal, subnormal), _mm_andnot_si128(is_subnormal, normal));
    return _mm_castsi128_ps(_mm_or_si128(sign, bits));
  } else {
    static_assert(not_written_for<Arch>, "widen_f16: no widening for this ISA");
  }
#elif defined(__aarch64__)
  return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(reinterpret_cast<const std::uint8_t*>(p))));
#endif
}

// lanes bf16 values at p: each the upper half of an fp32.
template <class Arch>
inline xsimd::batch<float, Arch> widen_bf16(const std::byte* p) noexcept {
#if defined(__x86_64__) || defined(__i386__)
  if constexpr (is_avx512<Arch>)
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  else if constexpr (is_avx2<Arch>)
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  else if constexpr (is_sse2<Arch>)
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  else
    static_assert(not_written_for<Arch>, "widen_bf16: no widening for this ISA");
#elif defined(__aarch64__)
  return vreinterpretq_f32_u32(vshll_n_u16(vreinterpret_u16_u8(vld1_u8(reinterpret_cast<const std::uint8_t*>(p))), 16));
#endif
}

// lanes unsigned bytes at p, as floats 0..255.
template <class Arch>
inline xsimd::batch<float, Arch> widen_u8(const std::byte* p) noexcept {
#if defined(__x86_64__) || defined(__i386__)
  if constexpr (is_avx512<Arch>)
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  else if constexpr (is_avx2<Arch>)
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  else if constexpr (is_sse2<Arch>) {
    const __m128i zero = _mm_setzero_si128();
    const __m128i bytes = _mm_cvtsi32_si128(load_bytes<std::int32_t>(p));
    return _mm_cvtepi32_ps(_mm_unpacklo_epi16(_mm_unpacklo_epi8(bytes, zero), zero));
  } else {
    static_assert(not_written_for<Arch>, "widen_u8: no widening for this ISA");
  }
#elif defined(__aarch64__)
  return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vcreate_u8(load_bytes<std::uint32_t>(p))))));
#endif
}

// On AVX2 and AVX-512 widen_u4 leaves each odd element's nibble where it is in its byte, so the
// odd lanes come out times 16 (a mask instead of a shift per batch); row_reader scales those lanes
// by scale / 16, and float(16 q) * (scale / 16) is the same real product as q * scale (scale / 16
// is exact: an fp16 scale divided by 16 is far from fp32's subnormals), so the fused q * scale +
// bias rounds to the same value.
template <class Arch>
inline constexpr float u4_odd_factor = is_avx512<Arch> || is_avx2<Arch> ? 16.0f : 1.0f;

// lanes 4-bit values from the lanes / 2 bytes at p (element 2i the low nibble of byte i), as
// floats 0..15, the odd ones times u4_odd_factor.
template <class Arch>
inline xsimd::batch<float, Arch> widen_u4(const std::byte* p) noexcept {
#if defined(__x86_64__) || defined(__i386__)
  const __m128i each_byte_twice = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const std::int64_t low_then_high_nibble = 0x000000f00000000f;
  if constexpr (is_avx512<Arch>) {
    const __m128i pairs = _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), each_byte_twice);
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_cvtepu8_epi32(pairs), _mm512_set1_epi64(low_then_high_nibble)));
  } else if constexpr (is_avx2<Arch>) {
    const __m128i pairs = _mm_shuffle_epi8(_mm_cvtsi32_si128(load_bytes<std::int32_t>(p)), each_byte_twice);
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_cvtepu8_epi32(pairs), _mm256_set1_epi64x(low_then_high_nibble)));
  } else if constexpr (is_sse2<Arch>) {
    const __m128i zero = _mm_setzero_si128();
    const __m128i words = _mm_unpacklo_epi8(_mm_cvtsi32_si128(load_bytes<std::uint16_t>(p)), zero);
    // 16-bit lanes holding bytes b become byte pairs (b & 15, b >> 4): the nibbles in element order
    const __m128i nibbles = _mm_or_si128(_mm_and_si128(words, _mm_set1_epi16(0x000f)),
                                         _mm_and_si128(_mm_slli_epi16(words, 4), _mm_set1_epi16(0x0f00)));
    return _mm_cvtepi32_ps(_mm_unpacklo_epi16(_mm_unpacklo_epi8(nibbles, zero), zero));
  } else {
    static_assert(not_written_for<Arch>, "widen_u4: no widening for this ISA");
  }
#elif defined(__aarch64__)
  // the two bytes in every lane, shifted right by 0, 4, 8 and 12 bits: lane i's nibble at the bottom
  const int32x4_t nibble_shifts = {0, -4, -8, -12};
  const uint32x4_t shifted = vshlq_u32(vdupq_n_u32(load_bytes<std::uint16_t>(p)), nibble_shifts);
  return vcvtq_f32_u32(vandq_u32(shifted, vdupq_n_u32(15)));
#endif
}

// scale in the even lanes, scale / u4_odd_factor in the odd ones.
template <class Arch>
inline xsimd::batch<float, Arch> u4_lane_scales(float scale) noexcept {
#if defined(__x86_64__) || defined(__i386__)
  if constexpr (is_avx512<Arch>)
    return _mm512_mask_blend_ps(0xaaaa, _mm512_set1_ps(scale), _mm512_set1_ps(scale / u4_odd_factor<Arch>));
  else if constexpr (is_avx2<Arch>)
    return _mm256_blend_ps(_mm256_set1_ps(scale), _mm256_set1_ps(scale / u4_odd_factor<Arch>), 0xaa);
#endif
  return xsimd::batch<float, Arch>(scale);
}

// A row being read: load(d) is elements [d, d + lanes) as fp32 (d a multiple of lanes), at(d) one
// element. bits is the storage per element, what a pass over part of a row reads.
template <class Arch, dtype Type>
struct row_reader;

template <class Arch>
struct row_reader<Arch, dtype::f32> {
  static constexpr int bits = 32;
  const std::byte* x;
  row_reader(const std::byte* row, std::int64_t) noexcept : x(row) {}
  xsimd::batch<float, Arch> load(std::int64_t d) const noexcept {
    return xsimd::batch<float, Arch>::load_unaligned(reinterpret_cast<const float*>(x) + d);
  }
  float at(std::int64_t d) const noexcept { return load_bytes<float>(x + 4 * d); }
};

// fp16 and bf16 rows: two bytes per element.
template <class Arch, dtype Type>
struct half_row_reader {
  static constexpr int bits = 16;
  const std::byte* x;
  half_row_reader(const std::byte* row, std::int64_t) noexcept : x(row) {}
  xsimd::batch<float, Arch> load(std::int64_t d) const noexcept {
    return Type == dtype::f16 ? widen_f16<Arch>(x + 2 * d) : widen_bf16<Arch>(x + 2 * d);
  }
  float at(std::int64_t d) const noexcept {
    const auto bits16 = load_bytes<std::uint16_t>(x + 2 * d);
    return Type == dtype::f16 ? float_from_f16_bits(bits16) : float_from_bf16_bits(bits16);
  }
};

template <class Arch>
struct row_reader<Arch, dtype::f16> : half_row_reader<Arch, dtype::f16> {
  using half_row_reader<Arch, dtype::f16>::half_row_reader;
};

template <class Arch>
struct row_reader<Arch, dtype::bf16> : half_row_reader<Arch, dtype::bf16> {
  using half_row_reader<Arch, dtype::bf16>::half_row_reader;
};

// The rowwise formats: x' = q * scale + bias rounded once, scale and bias read once per row.
template <class Arch>
struct row_reader<Arch, dtype::int8_rowwise> {
  static constexpr int bits = 8;
  const std::byte* x;
  float scale, bias;
  row_reader(const std::byte* row, std::int64_t dim) noexcept
      : x(row), scale(load_bytes<float>(row + dim)), bias(load_bytes<float>(row + dim + 4)) {}
  xsimd::batch<float, Arch> load(std::int64_t d) const noexcept { return load_with_bias(d, bias); }
  xsimd::batch<float, Arch> load_with_bias(std::int64_t d, float b) const noexcept {
    return fused_multiply_add<Arch>(widen_u8<Arch>(x + d), xsimd::batch<float, Arch>(scale), xsimd::batch<float, Arch>(b));
  }
  float at(std::int64_t d) const noexcept { return std::fma(static_cast<float>(std::to_integer<int>(x[d])), scale, bias); }
};

template <class Arch>
struct row_reader<Arch, dtype::int4_rowwise> {
  static constexpr int bits = 4;
  const std::byte* x;
  float scale, bias;
  xsimd::batch<float, Arch> lane_scales;
  row_reader(const std::byte* row, std::int64_t dim) noexcept : x(row) {
    const std::byte* scale_and_bias = row + (dim + 1) / 2;
#if defined(__x86_64__) || defined(__i386__)
    if constexpr (is_avx512<Arch> || is_avx2<Arch>) {  // both fp16 halves in one F16C conversion
      const __m128 both = _mm_cvtph_ps(_mm_cvtsi32_si128(load_bytes<std::int32_t>(scale_and_bias)));
      scale = _mm_cvtss_f32(both);
      bias = _mm_cvtss_f32(_mm_shuffle_ps(both, both, 1));
    } else
#endif
    {
      scale = float_from_f16_bits(load_bytes<std::uint16_t>(scale_and_bias));
      bias = float_from_f16_bits(load_bytes<std::uint16_t>(scale_and_bias + 2));
    }
    lane_scales = u4_lane_scales<Arch>(scale);
  }
  xsimd::batch<float, Arch> load(std::int64_t d) const noexcept { return load_with_bias(d, bias); }
  xsimd::batch<float, Arch> load_with_bias(std::int64_t d, float b) const noexcept {
    return fused_multiply_add<Arch>(widen_u4<Arch>(x + d / 2), lane_scales, xsimd::batch<float, Arch>(b));
  }
  float at(std::int64_t d) const noexcept {
    return std::fma(static_cast<float>((std::to_integer<int>(x[d / 2]) >> (4 * (d % 2))) & 15), scale, bias);
  }
};

// 0 + x.load(d), bit for bit: a one-index bag's sum, whose -0 elements come out +0 (the sum starts
// from 0, as the reference's and torch's). The rowwise formats add that 0 to their bias, once per
// row, where an add per batch had cost a one-index sum about a tenth of its speed (int8 and fp16
// at D = 64, against the lookup of the same rows). The same bits: q * scale and the bias are
// multiples of the smallest subnormal (as is q * scale rounded, where the multiply-add is not
// fused), so their sum is exactly 0 or rounds to a nonzero; an exact 0 is -0 only as -0 + -0,
// which a bias of +0 in place of -0 makes +0, as adding 0 to the result does.
template <class Reader>
[[gnu::always_inline]] inline auto load_plus_zero(const Reader& x, std::int64_t d) noexcept {
  if constexpr (requires { x.load_with_bias(d, x.bias); })
    return x.load_with_bias(d, x.bias + 0.0f);
  else
    return decltype(x.load(d))(0.0f) + x.load(d);
}

// The bytes of a stored row of dim elements (embag::row_bytes, at compile time).
template <dtype Type>
constexpr std::int64_t stored_row_bytes(std::int64_t dim) noexcept {
  switch (Type) {
    case dtype::f32: return 4 * dim;
    case dtype::f16:
    case dtype::bf16: return 2 * dim;
    case dtype::int8_rowwise: return dim + 8;
    case dtype::int4_rowwise: return (dim + 1) / 2 + 4;
  }
  return 0;
}

// Calls f.template operator()<Type>() for the request's element type.
template <class F>
inline decltype(auto) with_element_type(dtype type, F&& f) {
  switch (type) {
    case dtype::f16: return f.template operator()<dtype::f16>();
    case dtype::bf16: return f.template operator()<dtype::bf16>();
    case dtype::int8_rowwise: return f.template operator()<dtype::int8_rowwise>();
    case dtype::int4_rowwise: return f.template operator()<dtype::int4_rowwise>();
    case dtype::f32: break;
  }
  return f.template operator()<dtype::f32>();
}

}  // namespace embag::detail::EMBAG_ISA_NS
