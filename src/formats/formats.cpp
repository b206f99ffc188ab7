#include "formats/formats.hpp"

#include <bit>
#include <cstring>
#include <string>

#include "embag/quantize.hpp"
#include "formats/codecs.hpp"
#include "limits.hpp"

namespace embag {

static_assert(std::endian::native == std::endian::little, "stored rows are little-endian in memory and on disk");

namespace detail {
namespace {

std::optional<row_problem> encode_f32(const float* x, std::int64_t dim, std::byte* out) {
  std::memcpy(out, x, static_cast<std::size_t>(dim) * sizeof(float));
  return std::nullopt;
}

void decode_f32(const std::byte* row, std::int64_t dim, float* out) noexcept {
  std::memcpy(out, row, static_cast<std::size_t>(dim) * sizeof(float));
}

// Indexed by the dtype's value (embag/enums.h fixes them: the C ABI and the .embag file use them too).
constexpr format formats[] = {
    {dtype::f32, "fp32", 32, 0, encode_f32, decode_f32},
    {dtype::f16, "fp16", 16, 0, encode_f16, decode_f16},
    {dtype::bf16, "", 16, 0, encode_bf16, decode_bf16},
    {dtype::int8_rowwise, "int8", 8, 8, encode_int8_rowwise, decode_int8_rowwise},
    {dtype::int4_rowwise, "int4", 4, 4, encode_int4_rowwise, decode_int4_rowwise},
};
static_assert(std::size(formats) == std::size(all_dtypes));

constexpr bool indexed_by_value() {
  for (std::size_t i = 0; i < std::size(formats); ++i)
    if (static_cast<std::size_t>(formats[i].type) != i || all_dtypes[i] != formats[i].type) return false;
  return true;
}
static_assert(indexed_by_value(), "formats[] and all_dtypes follow the dtype values");

}  // namespace

const format* format_of(dtype type) noexcept {
  const auto i = static_cast<std::size_t>(type);
  return i < std::size(formats) ? &formats[i] : nullptr;
}

std::optional<std::int64_t> packed_row_bytes(const format& f, std::int64_t dim) noexcept {
  if (dim > max_array_bytes / 4) return std::nullopt;  // 32 bits per element at most: no overflow below
  return (dim * f.element_bits + 7) / 8 + f.trailer_bytes;
}

void decode_row(dtype type, const std::byte* row, std::int64_t dim, float* out) noexcept {
  format_of(type)->decode(row, dim, out);
}

}  // namespace detail

std::int64_t row_bytes(dtype type, std::int64_t dim) {
  const detail::format* f = detail::format_of(type);
  if (f == nullptr) throw error(errc::invalid_option, "dtype " + std::to_string(static_cast<int>(type)) + " is not a dtype");
  if (dim <= 0) throw error(errc::invalid_shape, "dim " + std::to_string(dim) + " must be > 0");
  const std::optional<std::int64_t> bytes = detail::packed_row_bytes(*f, dim);
  if (!bytes)
    throw error(errc::size_overflow,
                "a " + std::string(to_string(type)) + " row of dim " + std::to_string(dim) + " overflows the address space");
  return *bytes;
}

}  // namespace embag
