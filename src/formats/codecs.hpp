// The scalar codecs behind src/formats/formats.cpp's table, one pair per format (halves.cpp,
// rowwise.cpp), and the fp16 rounding the rowwise formats share.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>

#include "formats/formats.hpp"

namespace embag::detail {

template <class T>
T load(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
void store(std::byte* p, T v) noexcept {
  std::memcpy(p, &v, sizeof v);
}

// fp16 and bf16 bit maths (halves.cpp), round to nearest even.
std::uint16_t f16_from_float(float x) noexcept;
std::uint16_t bf16_from_float(float x) noexcept;
float float_from_f16(std::uint16_t h) noexcept;
// n floats rounded to `to` (f16 or bf16), 2 bytes each: 16-bit outputs, as the reference writes them.
void narrow_halves(const float* x, std::int64_t n, dtype to, std::byte* out) noexcept;
// The nearest fp16 at or below (up = false) or at or above (up = true) a finite x within fp16's
// range, as an fp32.
float f16_rounded(float x, bool up) noexcept;

// Stochastic rounding of an updated weight (embag/optim.hpp) to f16 or bf16: x finite and within
// the type's finite range; random24 uniform in [0, 2^24) from rounding_bits.
std::uint16_t stochastic_round(float x, dtype to, std::uint32_t random24) noexcept;
std::uint32_t rounding_bits(std::uint64_t seed, std::int64_t row, std::int64_t column) noexcept;

std::optional<row_problem> encode_f16(const float* x, std::int64_t dim, std::byte* out);
void decode_f16(const std::byte* row, std::int64_t dim, float* out) noexcept;
std::optional<row_problem> encode_bf16(const float* x, std::int64_t dim, std::byte* out);
void decode_bf16(const std::byte* row, std::int64_t dim, float* out) noexcept;
std::optional<row_problem> encode_int8_rowwise(const float* x, std::int64_t dim, std::byte* out);
void decode_int8_rowwise(const std::byte* row, std::int64_t dim, float* out) noexcept;
std::optional<row_problem> encode_int4_rowwise(const float* x, std::int64_t dim, std::byte* out);
void decode_int4_rowwise(const std::byte* row, std::int64_t dim, float* out) noexcept;

}  // namespace embag::detail
