// fp16 and bf16: the bit maths of rounding to nearest even, and their rows (D x 2 bytes).
#include <bit>
#include <cmath>
#include <cstdint>

#include "formats/codecs.hpp"

namespace embag::detail {
namespace {

// m / 2^shift rounded to nearest, ties to even (shift in [1, 31]).
std::uint32_t shift_right_rounded(std::uint32_t m, int shift) {
  const std::uint32_t q = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  return q + (rest > half || (rest == half && (q & 1)));
}

constexpr std::uint16_t f16_infinity = 0x7c00;

}  // namespace

std::uint16_t bf16_from_float(float x) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  // NaN: keep the top bits and force the quiet bit, so that a payload only in the dropped bits
  // does not turn into Inf
  if ((bits & 0x7fffffff) > 0x7f800000) return static_cast<std::uint16_t>((bits >> 16) | 0x0040);
  return static_cast<std::uint16_t>((bits >> 16) + ((bits & 0xffff) > 0x8000 || ((bits & 0xffff) == 0x8000 && (bits >> 16 & 1))));
}

namespace {

float float_from_bf16(std::uint16_t b) noexcept { return std::bit_cast<float>(std::uint32_t{b} << 16); }

std::optional<row_problem> encode_halves(const float* x, std::int64_t dim, std::byte* out, bool bf16) {
  for (std::int64_t d = 0; d < dim; ++d) {
    const std::uint16_t h = bf16 ? bf16_from_float(x[d]) : f16_from_float(x[d]);
    if (std::isfinite(x[d]) && (h & 0x7fff) == (bf16 ? 0x7f80 : f16_infinity))
      return row_problem{d, bf16 ? "rounds to infinity in bf16" : "is beyond fp16's range (|x| >= 65520 rounds to infinity)"};
    store(out + 2 * d, h);
  }
  return std::nullopt;
}

}  // namespace

std::uint16_t f16_from_float(float x) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000);
  const std::uint32_t magnitude = bits & 0x7fffffff;
  if (magnitude > 0x7f800000)  // NaN: quiet, with the payload's top bits
    return static_cast<std::uint16_t>(sign | 0x7e00 | ((magnitude >> 13) & 0x3ff));
  if (magnitude >= 0x477ff000) return sign | f16_infinity;  // 65520 and up round to Inf (ties to even)
  const int exponent = static_cast<int>(magnitude >> 23);
  if (exponent < 113) {  // below 2^-14: an fp16 subnormal, in units of 2^-24
    if (exponent < 102) return sign;  // below 2^-25: rounds to 0 (2^-25 itself ties to even 0)
    const std::uint32_t significand = (magnitude & 0x7fffff) | 0x800000;  // x = significand * 2^(exponent - 150)
    return static_cast<std::uint16_t>(sign | shift_right_rounded(significand, 126 - exponent));
  }
  // Normal: drop 13 significand bits with rounding (a carry into the exponent is right), rebias 127 -> 15.
  return static_cast<std::uint16_t>(sign | (shift_right_rounded(magnitude, 13) - ((127 - 15) << 10)));
}

float float_from_f16(std::uint16_t h) noexcept {
  const std::uint32_t sign = std::uint32_t{h & 0x8000u} << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1f, fraction = h & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000 | fraction << 13);
  if (exponent == 0) {  // zero or subnormal: fraction * 2^-24, exact in fp32
    const float magnitude = std::ldexp(static_cast<float>(fraction), -24);
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | (exponent + 127 - 15) << 23 | fraction << 13);
}

float f16_rounded(float x, bool up) noexcept {
  const std::uint16_t h = f16_from_float(x);
  const float nearest = float_from_f16(h);
  if (nearest == x || (up ? nearest > x : nearest < x)) return nearest;
  // One fp16 step in the direction asked; bit patterns are ordered by magnitude within a sign.
  if (nearest == 0.0f) return up ? 0x1p-24f : -0x1p-24f;
  const bool larger_magnitude = (nearest > 0.0f) == up;
  return float_from_f16(static_cast<std::uint16_t>(larger_magnitude ? h + 1 : h - 1));
}

std::optional<row_problem> encode_f16(const float* x, std::int64_t dim, std::byte* out) {
  return encode_halves(x, dim, out, false);
}

void decode_f16(const std::byte* row, std::int64_t dim, float* out) noexcept {
  for (std::int64_t d = 0; d < dim; ++d) out[d] = float_from_f16(load<std::uint16_t>(row + 2 * d));
}

std::optional<row_problem> encode_bf16(const float* x, std::int64_t dim, std::byte* out) {
  return encode_halves(x, dim, out, true);
}

void decode_bf16(const std::byte* row, std::int64_t dim, float* out) noexcept {
  for (std::int64_t d = 0; d < dim; ++d) out[d] = float_from_bf16(load<std::uint16_t>(row + 2 * d));
}

void narrow_halves(const float* x, std::int64_t n, dtype to, std::byte* out) noexcept {
  for (std::int64_t d = 0; d < n; ++d) store(out + 2 * d, to == dtype::f16 ? f16_from_float(x[d]) : bf16_from_float(x[d]));
}

}  // namespace embag::detail

namespace embag::detail {

std::uint32_t rounding_bits(std::uint64_t seed, std::int64_t row, std::int64_t column) noexcept {
  // splitmix64's finaliser over the three, each multiplied by an odd constant first
  std::uint64_t z = seed * 0x9e3779b97f4a7c15u ^ static_cast<std::uint64_t>(row) * 0xbf58476d1ce4e5b9u ^
                    static_cast<std::uint64_t>(column) * 0x94d049bb133111ebu;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  z ^= z >> 31;
  return static_cast<std::uint32_t>(z >> 40);  // the top 24 bits
}

std::uint16_t stochastic_round(float x, dtype to, std::uint32_t random24) noexcept {
  // the neighbours toward zero (t) and away from it (a), as fp32 values and 16-bit patterns
  std::uint16_t t_bits = 0, a_bits = 0;
  float t = 0, a = 0;
  if (to == dtype::bf16) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
    t_bits = static_cast<std::uint16_t>(bits >> 16);
    if ((bits & 0xffff) == 0) return t_bits;
    a_bits = static_cast<std::uint16_t>(t_bits + 1);  // one step up in magnitude, within the sign
    t = float_from_bf16(t_bits);
    a = float_from_bf16(a_bits);
  } else {
    t = f16_rounded(x, x < 0);
    a = f16_rounded(x, x > 0);
    if (t == a) return f16_from_float(x);
    t_bits = f16_from_float(t);
    a_bits = f16_from_float(a);
  }
  // away with probability (x - t) / (a - t); a random24 of 2^24 evenly spread values in [0, 1)
  return static_cast<float>(random24) * 0x1p-24f < (x - t) / (a - t) ? a_bits : t_bits;
}

}  // namespace embag::detail
