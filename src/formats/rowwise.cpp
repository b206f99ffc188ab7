// The rowwise formats, FBGEMM's fused layouts: int8 (D bytes of q, fp32 scale and bias) and int4
// (nibbles, fp16 scale and bias); x' = q * scale + bias, rounded once (std::fma).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "formats/codecs.hpp"

namespace embag::detail {
namespace {

// The row's min and max, or the first element that is not finite.
struct value_range {
  float min = 0, max = 0;
  std::int64_t min_column = 0, max_column = 0;
};
std::optional<row_problem> find_range(const float* x, std::int64_t dim, value_range& r) {
  r = {x[0], x[0], 0, 0};
  for (std::int64_t d = 0; d < dim; ++d) {
    if (!std::isfinite(x[d])) return row_problem{d, "is not finite: rowwise formats hold finite rows only"};
    if (x[d] < r.min) r.min = x[d], r.min_column = d;
    if (x[d] > r.max) r.max = x[d], r.max_column = d;
  }
  return std::nullopt;
}

// q = round((x - bias) / scale), in double: near enough to exact that q is the nearest level. The
// levels cover the row, so the clamp only absorbs the last bit of double rounding.
std::uint32_t level(float x, float bias, float scale, std::uint32_t top) {
  if (scale == 0.0f) return 0;
  const double q = std::floor((double(x) - double(bias)) / double(scale) + 0.5);
  return static_cast<std::uint32_t>(std::clamp(q, 0.0, double(top)));
}

}  // namespace

std::optional<row_problem> encode_int8_rowwise(const float* x, std::int64_t dim, std::byte* out) {
  value_range r;
  if (auto p = find_range(x, dim, r)) return p;
  constexpr float largest = 0x1p126f;
  if (r.min < -largest || r.max > largest)
    return row_problem{r.max > largest ? r.max_column : r.min_column,
                       "exceeds 2^126 in magnitude: int8_rowwise's q * scale + bias could overflow fp32"};
  const double range = double(r.max) - double(r.min);
  float scale = static_cast<float>(range / 255.0);
  while (double(scale) * 255.0 < range) scale = std::nextafter(scale, std::numeric_limits<float>::infinity());
  for (std::int64_t d = 0; d < dim; ++d) out[d] = static_cast<std::byte>(level(x[d], r.min, scale, 255));
  store(out + dim, scale);
  store(out + dim + 4, r.min);
  return std::nullopt;
}

std::optional<row_problem> encode_int4_rowwise(const float* x, std::int64_t dim, std::byte* out) {
  value_range r;
  if (auto p = find_range(x, dim, r)) return p;
  if (r.min < -65504.0f) return row_problem{r.min_column, "is below -65504: int4_rowwise's bias is an fp16"};
  const float bias = f16_rounded(r.min, false);
  const double range = double(r.max) - double(bias);
  if (range > 15.0 * 65504.0)  // exact in double, unlike range / 15
    return row_problem{r.max_column, "makes the row too wide for int4_rowwise: (max - bias) / 15 exceeds 65504, "
                                     "the largest fp16 scale"};
  float scale = range == 0.0 ? 0.0f : f16_rounded(static_cast<float>(range / 15.0), true);
  while (double(scale) * 15.0 < range) scale = float_from_f16(static_cast<std::uint16_t>(f16_from_float(scale) + 1));
  const std::int64_t packed = (dim + 1) / 2;
  std::fill(out, out + packed, std::byte{0});
  for (std::int64_t d = 0; d < dim; ++d)
    out[d / 2] |= static_cast<std::byte>(level(x[d], bias, scale, 15) << (4 * (d % 2)));
  store(out + packed, f16_from_float(scale));
  store(out + packed + 2, f16_from_float(bias));
  return std::nullopt;
}

void decode_int8_rowwise(const std::byte* row, std::int64_t dim, float* out) noexcept {
  const auto scale = load<float>(row + dim), bias = load<float>(row + dim + 4);
  for (std::int64_t d = 0; d < dim; ++d) out[d] = std::fma(static_cast<float>(std::to_integer<int>(row[d])), scale, bias);
}

void decode_int4_rowwise(const std::byte* row, std::int64_t dim, float* out) noexcept {
  const std::int64_t packed = (dim + 1) / 2;
  const float scale = float_from_f16(load<std::uint16_t>(row + packed));
  const float bias = float_from_f16(load<std::uint16_t>(row + packed + 2));
  for (std::int64_t d = 0; d < dim; ++d)
    out[d] = std::fma(static_cast<float>((std::to_integer<int>(row[d / 2]) >> (4 * (d % 2))) & 15), scale, bias);
}

}  // namespace embag::detail
