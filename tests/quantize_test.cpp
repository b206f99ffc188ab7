// Compressed tables: each row layout byte for byte against hand-built rows, fp16 and bf16 against
// an independent round-to-nearest-even oracle (every one of the 65536 patterns, and random
// floats), the rowwise formats' documented error bound on random and adversarial rows, rows a
// format cannot hold, parallel == serial, dequantize's checks, the .embag file (round trips mapped
// and copied, a catalogue of malformed files) and <f2 .npy files.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "embag/embag.hpp"
#include "embag/npy.hpp"
#include "embag/quantize.hpp"
#include "support/temporary_directory.hpp"

namespace embag {
namespace {

constexpr dtype every_dtype[] = {dtype::f32, dtype::f16, dtype::bf16, dtype::int8_rowwise, dtype::int4_rowwise};

std::vector<std::byte> bytes_of_row(const compressed_table& t, std::int64_t r) {
  const std::byte* p = t.view().data + r * t.row_bytes();
  return {p, p + t.row_bytes()};
}

std::vector<float> dequantized(compressed_table_view t, const execution& how = {}) {
  std::vector<float> out(static_cast<std::size_t>(t.rows * t.dim));
  dequantize(t, {out.data(), t.rows, t.dim, t.dim}, how);
  return out;
}

compressed_table quantize_row(const std::vector<float>& x, dtype type) {
  return quantize(table_view<const float>{x.data(), 1, static_cast<std::int64_t>(x.size()), 0}, type);
}

template <class T>
T read(const std::vector<std::byte>& row, std::size_t at) {
  T v;
  std::memcpy(&v, row.data() + at, sizeof v);
  return v;
}

// The oracle's own decoding, in double: sign, exponent and fraction fields as the standards define.
double f16_value(std::uint16_t h) {
  const int e = (h >> 10) & 31, f = h & 1023;
  const double magnitude = e == 0 ? std::ldexp(f, -24) : e == 31 ? (f ? NAN : INFINITY) : std::ldexp(1024 + f, e - 25);
  return h & 0x8000 ? -magnitude : magnitude;
}
double bf16_value(std::uint16_t b) {
  const int e = (b >> 7) & 255, f = b & 127;
  const double magnitude = e == 0 ? std::ldexp(f, -133) : e == 255 ? (f ? NAN : INFINITY) : std::ldexp(128 + f, e - 134);
  return b & 0x8000 ? -magnitude : magnitude;
}

// Every finite non-negative value of a 16-bit format, ascending, with its pattern.
std::vector<std::pair<double, std::uint16_t>> positive_values(double (*value)(std::uint16_t)) {
  std::vector<std::pair<double, std::uint16_t>> v;
  for (std::uint32_t h = 0; h < 0x8000; ++h)
    if (std::isfinite(value(static_cast<std::uint16_t>(h)))) v.push_back({value(static_cast<std::uint16_t>(h)), h});
  std::sort(v.begin(), v.end());
  return v;
}

// Round to nearest, ties to the even pattern, by search; nullopt past the largest + half an ulp.
std::optional<std::uint16_t> nearest_even(const std::vector<std::pair<double, std::uint16_t>>& values, double x) {
  const double a = std::fabs(x);
  const auto hi = std::lower_bound(values.begin(), values.end(), std::pair{a, std::uint16_t{0}});
  std::uint16_t pick;
  if (hi == values.end()) {
    const double top = values.back().first, ulp = top - values[values.size() - 2].first;
    if (a >= top + ulp / 2) return std::nullopt;
    pick = values.back().second;
  } else if (hi->first == a || hi == values.begin()) {
    pick = hi->second;
  } else {
    const auto lo = hi - 1;
    const double down = a - lo->first, up = hi->first - a;
    pick = down < up ? lo->second : up < down ? hi->second : (lo->second & 1) ? hi->second : lo->second;
  }
  return static_cast<std::uint16_t>(pick | (std::signbit(x) ? 0x8000 : 0));
}

// ---------------------------------------------------------------------------------------------
// Layouts.

TEST(Quantize, RowBytesOfEveryDtype) {
  const std::int64_t dims[] = {1, 2, 5, 64, 127};
  for (std::int64_t d : dims) {
    EXPECT_EQ(row_bytes(dtype::f32, d), 4 * d);
    EXPECT_EQ(row_bytes(dtype::f16, d), 2 * d);
    EXPECT_EQ(row_bytes(dtype::bf16, d), 2 * d);
    EXPECT_EQ(row_bytes(dtype::int8_rowwise, d), d + 8);
    EXPECT_EQ(row_bytes(dtype::int4_rowwise, d), (d + 1) / 2 + 4);
  }
  const auto code_of = [](auto f) {
    try {
      f();
    } catch (const error& e) {
      return e.code();
    }
    return errc{};
  };
  EXPECT_EQ(code_of([] { row_bytes(dtype::f16, 0); }), errc::invalid_shape);
  EXPECT_EQ(code_of([] { row_bytes(static_cast<dtype>(9), 4); }), errc::invalid_option);
  EXPECT_EQ(code_of([] { row_bytes(dtype::f32, std::int64_t{1} << 61); }), errc::size_overflow);
}

// FBGEMM's fused 8-bit rowwise row: D uint8, then fp32 scale at byte D, fp32 bias at D + 4.
TEST(Quantize, Int8RowIsFbgemmsFusedRowwiseLayout) {
  // min -1, max 254: scale (254 + 1) / 255 = 1 exactly, bias -1; 0.4 is 1.4 levels up -> q 1
  const compressed_table t = quantize_row({-1.0f, 254.0f, 9.0f, 0.4f, 126.6f}, dtype::int8_rowwise);
  std::vector<std::byte> want = {std::byte{0}, std::byte{255}, std::byte{10}, std::byte{1}, std::byte{128}};
  const float scale = 1.0f, bias = -1.0f;
  want.resize(13);
  std::memcpy(want.data() + 5, &scale, 4);
  std::memcpy(want.data() + 9, &bias, 4);
  EXPECT_EQ(bytes_of_row(t, 0), want);
  EXPECT_EQ(dequantized(t.view()), (std::vector<float>{-1.0f, 254.0f, 9.0f, 0.0f, 127.0f}));
}

// FBGEMM's fused 4-bit rowwise row: element j in byte j / 2, low nibble first, then fp16 scale and
// fp16 bias.
TEST(Quantize, Int4RowIsFbgemmsFusedNBitLayout) {
  const compressed_table t = quantize_row({0.0f, 15.0f, 3.0f, 7.0f, 1.2f}, dtype::int4_rowwise);  // scale 1, bias 0
  const std::vector<std::byte> want = {std::byte{0xf0}, std::byte{0x73}, std::byte{0x01},  // q 0 15 | 3 7 | 1 (high 0)
                                       std::byte{0x00}, std::byte{0x3c},                    // fp16 1.0
                                       std::byte{0x00}, std::byte{0x00}};                   // fp16 0.0
  EXPECT_EQ(bytes_of_row(t, 0), want);
  EXPECT_EQ(dequantized(t.view()), (std::vector<float>{0.0f, 15.0f, 3.0f, 7.0f, 1.0f}));
}

TEST(Quantize, HalfRowsAreIeeeBinary16AndBfloat16Bits) {
  // 65504 rounds up to bf16 65536 (its dropped bits 0xe000 are past the half)
  const std::vector<float> x = {1.0f, -2.0f, 65504.0f, 0x1p-24f, 0.0f, -0.0f, 0x1p-14f, 1.0f / 3.0f};
  const std::uint16_t f16[] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x0000, 0x8000, 0x0400, 0x3555};
  const std::uint16_t bf16[] = {0x3f80, 0xc000, 0x4780, 0x3380, 0x0000, 0x8000, 0x3880, 0x3eab};
  const std::vector<std::byte> f16_row = bytes_of_row(quantize_row(x, dtype::f16), 0);
  const std::vector<std::byte> bf16_row = bytes_of_row(quantize_row(x, dtype::bf16), 0);
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(read<std::uint16_t>(f16_row, 2 * i), f16[i]) << x[i];
    EXPECT_EQ(read<std::uint16_t>(bf16_row, 2 * i), bf16[i]) << x[i];
  }
  const std::vector<std::byte> f32_row = bytes_of_row(quantize_row(x, dtype::f32), 0);
  EXPECT_EQ(std::memcmp(f32_row.data(), x.data(), 4 * x.size()), 0);
}

// ---------------------------------------------------------------------------------------------
// fp16 and bf16.

// Each of the 65536 patterns dequantises to its value and quantises back to itself (NaN to a NaN).
TEST(Quantize, EveryHalfPatternRoundTripsExactly) {
  std::vector<std::uint16_t> all(65536);
  for (std::uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<std::uint16_t>(i);
  for (const auto& [type, value] : {std::pair{dtype::f16, &f16_value}, std::pair{dtype::bf16, &bf16_value}}) {
    SCOPED_TRACE(std::string(to_string(type)));
    const compressed_table_view view{reinterpret_cast<const std::byte*>(all.data()), 1, 65536, 0, type};
    const std::vector<float> x = dequantized(view);
    const std::vector<std::byte> back = bytes_of_row(quantize_row(x, type), 0);
    int mismatches = 0;
    for (std::uint32_t i = 0; i < 65536 && mismatches < 5; ++i) {
      const double want = value(static_cast<std::uint16_t>(i));
      const auto again = read<std::uint16_t>(back, 2 * i);
      if (std::isnan(want)) {
        mismatches += !std::isnan(x[i]) || !std::isnan(value(again));
      } else {
        mismatches += double(x[i]) != want || std::signbit(x[i]) != std::signbit(want) || again != i;
      }
      if (mismatches) ADD_FAILURE() << "pattern " << i << " -> " << x[i] << " -> " << again;
    }
  }
}

// Random floats of every magnitude, and exact ties, against the search oracle.
TEST(Quantize, HalvesRoundToNearestEven) {
  const std::uint32_t seed = 20240611;
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::vector<float> x;
  for (int i = 0; i < 200000; ++i) {
    float v = std::bit_cast<float>(static_cast<std::uint32_t>(rng()));
    if (std::isfinite(v)) x.push_back(v);
  }
  // ties: 1 + 2^-11 (between 1 and 1 + 2^-10, to even 1), 1 + 3 x 2^-11 (to even 1 + 2^-9), the
  // fp16 subnormal tie 3 x 2^-25, and 2^-25 itself (to even 0); bf16's 1 + 2^-8 and 1 + 3 x 2^-8
  for (float t : {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 3 * 0x1p-25f, 0x1p-25f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f})
    x.insert(x.end(), {t, -t});
  for (const auto& [type, value] : {std::pair{dtype::f16, &f16_value}, std::pair{dtype::bf16, &bf16_value}}) {
    SCOPED_TRACE(std::string(to_string(type)));
    const auto values = positive_values(value);
    std::vector<float> representable;
    for (float v : x)
      if (nearest_even(values, v)) representable.push_back(v);
    const std::vector<std::byte> row = bytes_of_row(quantize_row(representable, type), 0);
    const double relative = type == dtype::f16 ? 0x1p-11 : 0x1p-8, tiny = type == dtype::f16 ? 0x1p-25 : 0x1p-134;
    int failures = 0;
    for (std::size_t i = 0; i < representable.size() && failures < 5; ++i) {
      const std::uint16_t got = read<std::uint16_t>(row, 2 * i), want = *nearest_even(values, representable[i]);
      const double error = std::fabs(value(got) - double(representable[i]));
      if (got != want || error > std::max(relative * std::fabs(double(representable[i])), tiny)) {
        ++failures;
        ADD_FAILURE() << representable[i] << " -> " << got << ", want " << want;
      }
    }
    EXPECT_GT(representable.size(), x.size() / 10);
  }
}

// Inf and NaN carry over; a finite value that would round to infinity is an error.
TEST(Quantize, HalvesKeepInfAndNanAndRejectOverflow) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  // a NaN whose payload is only in the low 16 bits: truncation alone would make bf16 Inf
  const float low_nan = std::bit_cast<float>(std::uint32_t{0x7f800001});
  for (dtype type : {dtype::f16, dtype::bf16}) {
    SCOPED_TRACE(std::string(to_string(type)));
    const std::vector<float> back = dequantized(quantize_row({inf, -inf, nan, low_nan, 65519.0f}, type).view());
    EXPECT_EQ(back[0], inf);
    EXPECT_EQ(back[1], -inf);
    EXPECT_TRUE(std::isnan(back[2]));
    EXPECT_TRUE(std::isnan(back[3]));
  }
  const auto rejected = [](float v, dtype type, const std::string& message) {
    try {
      quantize_row({1.0f, v}, type);
      ADD_FAILURE() << v << " accepted";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::invalid_option);
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  };
  rejected(65520.0f, dtype::f16, "quantize to f16: table[0][1] = 65520 is beyond fp16's range");
  rejected(-1e9f, dtype::f16, "table[0][1] = -1e+09");
  rejected(std::numeric_limits<float>::max(), dtype::bf16, "rounds to infinity in bf16");
}

// ---------------------------------------------------------------------------------------------
// The rowwise error bound.

// The documented bound, and the scale and bias the header says are stored.
void expect_rowwise_bound(const std::vector<float>& x, dtype type) {
  const compressed_table t = quantize_row(x, type);
  const std::vector<float> y = dequantized(t.view());
  const std::vector<std::byte> row = bytes_of_row(t, 0);
  const auto dim = x.size();
  const bool int8 = type == dtype::int8_rowwise;
  const std::size_t tail = int8 ? dim : (dim + 1) / 2;
  const double scale = int8 ? read<float>(row, tail) : f16_value(read<std::uint16_t>(row, tail));
  const double bias = int8 ? read<float>(row, tail + 4) : f16_value(read<std::uint16_t>(row, tail + 2));
  const double lo = *std::min_element(x.begin(), x.end()), hi = *std::max_element(x.begin(), x.end());
  const double m = std::max(std::fabs(lo), std::fabs(hi));
  const double levels = int8 ? 255 : 15;
  // bias: min itself (int8), the largest fp16 at or below min (int4)
  if (int8) {
    EXPECT_EQ(bias, lo);
  } else {
    const auto values = positive_values(&f16_value);
    EXPECT_LE(bias, lo);
    const std::uint16_t b = read<std::uint16_t>(row, tail + 2);
    const std::uint16_t toward_min = static_cast<std::uint16_t>(b & 0x8000 ? (b == 0x8000 ? 0x0001 : b - 1) : b + 1);
    if (bias != lo) {
      EXPECT_GT(f16_value(toward_min), lo) << "bias " << bias << " is not the largest fp16 <= " << lo;
    }
  }
  // scale: the smallest value of its format with levels x scale >= max - bias; 0 only for max == bias
  EXPECT_GE(scale * levels, hi - bias);
  if (hi == bias) {
    EXPECT_EQ(scale, 0.0);
  } else {
    const double below = int8 ? double(std::nextafter(float(scale), 0.0f))
                              : f16_value(static_cast<std::uint16_t>(read<std::uint16_t>(row, tail) - 1));
    EXPECT_LT(below * levels, hi - bias) << "scale " << scale << " is not rounded up by the least step";
  }
  const double bound = (1 + 0x1p-22) * scale / 2 + 0x1p-22 * m;
  for (std::size_t d = 0; d < dim; ++d)
    EXPECT_LE(std::fabs(double(x[d]) - double(y[d])), bound) << "x[" << d << "] = " << x[d] << " -> " << y[d];
}

std::vector<std::vector<float>> adversarial_rows(dtype type) {
  const float denormal = std::numeric_limits<float>::denorm_min();
  std::vector<std::vector<float>> rows = {
      {0.0f},
      {-7.25f},
      std::vector<float>(33, 0.1f),                  // constant, not an fp16
      std::vector<float>(8, -3.0e4f),                // constant
      {1.0f, 1.0f + 0x1p-23f},                       // one float ulp of range
      {1000.3f, 1000.30005f, 1000.3f},               // tiny range at a large offset
      {-5.0f, -4.0f, -4.5f, -4.99f},                 // negative only
      {0.1f, 0.2f, 0.3f, 0.25f, 0.15f},              // min not an fp16
      {denormal, 3 * denormal, 0.0f, -2 * denormal}, // float denormals
      {1e-38f, -1e-38f, 5e-39f},                     // around float's normal limit
      {0.0f, 1e-7f, 5e-8f},                          // an fp16-subnormal scale
      {-1.0f, 1.0f, 0.0f, 0.5f, -0.5f, 1.0f / 3, 2.0f / 3},
  };
  if (type == dtype::int8_rowwise) {
    rows.push_back({0x1p126f, -0x1p126f, 0.0f, 1.0f});  // the widest range accepted
    rows.push_back({0x1p126f, 0x1p126f * 0.999f});
    rows.push_back({1e30f, 1.0001e30f, -1e-30f});
  } else {
    rows.push_back({-65504.0f, 65504.0f, 0.0f});
    rows.push_back({-65504.0f, 9e5f, 1.0f});  // (max - bias) / 15 just below 65504
    rows.push_back({65504.0f, 65000.0f, 65503.0f});
  }
  return rows;
}

TEST(Quantize, RowwiseErrorBoundOnAdversarialRows) {
  for (dtype type : {dtype::int8_rowwise, dtype::int4_rowwise}) {
    for (const std::vector<float>& row : adversarial_rows(type)) {
      SCOPED_TRACE(std::string(to_string(type)) + " row starting " + std::to_string(row[0]));
      expect_rowwise_bound(row, type);
    }
  }
  // a constant row comes back exactly when its value is representable as the bias
  EXPECT_EQ(dequantized(quantize_row(std::vector<float>(5, 0.1f), dtype::int8_rowwise).view()), std::vector<float>(5, 0.1f));
  EXPECT_EQ(dequantized(quantize_row(std::vector<float>(5, -1.5f), dtype::int4_rowwise).view()), std::vector<float>(5, -1.5f));
}

TEST(Quantize, RowwiseErrorBoundOnRandomRows) {
  const std::uint32_t seed = 7;
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> dims(1, 70), exponents(-40, 12);
  for (int i = 0; i < 600; ++i) {
    const int dim = dims(rng);
    const float magnitude = std::ldexp(1.0f, exponents(rng)), offset = i % 3 == 0 ? magnitude * normal(rng) * 10 : 0.0f;
    std::vector<float> row(dim);
    for (float& v : row) v = offset + magnitude * normal(rng);
    for (dtype type : {dtype::int8_rowwise, dtype::int4_rowwise}) {
      SCOPED_TRACE(std::string(to_string(type)) + " row " + std::to_string(i));
      expect_rowwise_bound(row, type);
    }
  }
}

// NaN, Inf and values out of the format's range are errors naming the first such element.
TEST(Quantize, RowwiseRejectsRowsItCannotHold) {
  const float inf = std::numeric_limits<float>::infinity();
  struct bad_case {
    dtype type;
    float value;
    const char* message;
  };
  const bad_case cases[] = {
      {dtype::int8_rowwise, std::numeric_limits<float>::quiet_NaN(), "table[40][3] = nan is not finite"},
      {dtype::int8_rowwise, inf, "table[40][3] = inf is not finite"},
      {dtype::int4_rowwise, -inf, "table[40][3] = -inf is not finite"},
      {dtype::int8_rowwise, 0x1p127f, "table[40][3] = 1.70141183e+38 exceeds 2^126"},
      {dtype::int8_rowwise, -0x1.000002p126f, "exceeds 2^126"},
      {dtype::int4_rowwise, -65505.0f, "table[40][3] = -65505 is below -65504"},
      {dtype::int4_rowwise, 1e6f, "table[40][3] = 1000000 makes the row too wide for int4_rowwise"},
  };
  std::vector<float> x(300 * 8, 0.5f);
  for (const bad_case& c : cases) {
    SCOPED_TRACE(c.message);
    x[40 * 8 + 3] = c.value;
    x[200 * 8 + 1] = c.value;  // a later bad row, maybe in a block that finishes first: not the one reported
    for (int threads : {1, 2, 0}) {
      execution how;
      how.max_threads = threads;
      try {
        quantize({x.data(), 300, 8, 0}, c.type, how);
        ADD_FAILURE() << "accepted";
      } catch (const error& e) {
        EXPECT_EQ(e.code(), errc::invalid_option);
        EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
      }
    }
    x[40 * 8 + 3] = x[200 * 8 + 1] = 0.5f;
  }
}

// ---------------------------------------------------------------------------------------------
// Threads, views and checks.

TEST(Quantize, ParallelIsBitwiseSerial) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  const std::int64_t rows = 5000, dim = 67, stride = 80;  // strided input: 13 floats between rows
  std::vector<float> x(rows * stride);
  for (float& v : x) v = normal(rng);
  for (dtype type : every_dtype) {
    SCOPED_TRACE(std::string(to_string(type)));
    execution serial, parallel;
    serial.max_threads = 1;
    const compressed_table a = quantize({x.data(), rows, dim, stride}, type, serial);
    const compressed_table b = quantize({x.data(), rows, dim, stride}, type, parallel);
    ASSERT_EQ(a.row_bytes(), row_bytes(type, dim));
    EXPECT_EQ(std::memcmp(a.view().data, b.view().data, static_cast<std::size_t>(rows * a.row_bytes())), 0);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.view().data) % 64, 0u);
    EXPECT_EQ(dequantized(a.view(), serial), dequantized(a.view(), parallel));
  }
}

// A view with padded rows (FBGEMM's table-batched tables pad) reads like the packed one, and is
// written packed.
TEST(Quantize, PaddedViewsAreReadAndWrittenPacked) {
  const test::temporary_directory dir;
  std::vector<float> x(7 * 5);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(float(i));
  for (dtype type : every_dtype) {
    SCOPED_TRACE(std::string(to_string(type)));
    const compressed_table packed = quantize({x.data(), 7, 5, 0}, type);
    const std::int64_t bytes = packed.row_bytes(), stride = bytes + 11;
    std::vector<std::byte> padded(7 * stride, std::byte{0xee});
    for (std::int64_t r = 0; r < 7; ++r) std::memcpy(padded.data() + r * stride, packed.view().data + r * bytes, bytes);
    const compressed_table_view view{padded.data(), 7, 5, stride, type};
    EXPECT_EQ(dequantized(view), dequantized(packed.view()));
    write_embag(dir.path("t.embag"), view);
    const compressed_table back = compressed_table::open(dir.path("t.embag"));
    EXPECT_EQ(back.row_bytes(), bytes);
    EXPECT_EQ(std::memcmp(back.view().data, packed.view().data, static_cast<std::size_t>(7 * bytes)), 0);
  }
}

TEST(Quantize, DequantizeChecksEverythingBeforeWriting) {
  std::vector<float> x(4 * 6, 1.25f);
  const compressed_table t = quantize({x.data(), 4, 6, 0}, dtype::int8_rowwise);
  const compressed_table_view good = t.view();
  std::vector<std::byte> writable(good.data, good.data + 4 * t.row_bytes());
  struct bad_call {
    const char* what;
    compressed_table_view table;
    table_view<float> out;
    errc code;
    const char* message;
  };
  std::vector<float> out(4 * 6 + 64, -9.0f);
  const auto alias = reinterpret_cast<float*>(writable.data());
  const bad_call cases[] = {
      {"too few out rows", good, {out.data(), 3, 6, 0}, errc::size_mismatch, "out is 3 x 6 but the table is 4 x 6"},
      {"other dim", good, {out.data(), 4, 5, 0}, errc::size_mismatch, "out is 4 x 5"},
      {"null out", good, {nullptr, 4, 6, 0}, errc::null_pointer, "out is null"},
      {"null table", {nullptr, 4, 6, 0, dtype::int8_rowwise}, {out.data(), 4, 6, 0}, errc::null_pointer, "table is null"},
      {"negative rows", {good.data, -1, 6, 0, dtype::int8_rowwise}, {out.data(), 4, 6, 0}, errc::invalid_shape, "-1 rows"},
      {"dim 0", {good.data, 4, 0, 0, dtype::int8_rowwise}, {out.data(), 4, 6, 0}, errc::invalid_shape, "dim 0"},
      {"stride below a row", {good.data, 4, 6, 13, dtype::int8_rowwise}, {out.data(), 4, 6, 0}, errc::invalid_shape,
       "row_stride 13 bytes, less than the 14 bytes of a int8_rowwise row"},
      {"not a dtype", {good.data, 4, 6, 0, static_cast<dtype>(7)}, {out.data(), 4, 6, 0}, errc::invalid_option,
       "element_type = 7 is not a dtype"},
      {"overflowing size", {good.data, std::int64_t{1} << 60, 6, 0, dtype::int8_rowwise}, {out.data(), 4, 6, 0},
       errc::size_overflow, "overflows the address space"},
      {"out over the table", {writable.data(), 4, 6, 0, dtype::int8_rowwise}, {alias, 4, 6, 0}, errc::aliasing, "out"},
  };
  const std::vector<float> out_before = out;
  const std::vector<std::byte> writable_before = writable;
  for (const bad_call& c : cases) {
    SCOPED_TRACE(c.what);
    try {
      dequantize(c.table, c.out);
      ADD_FAILURE() << "accepted";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), c.code) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    }
    EXPECT_EQ(out, out_before);
    EXPECT_EQ(writable, writable_before);
  }
}

// ---------------------------------------------------------------------------------------------
// The .embag file.

class EmbagFiles : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return dir_.path(name); }
  test::temporary_directory dir_;
};

TEST_F(EmbagFiles, EveryDtypeRoundTripsMappedAndCopied) {
  std::vector<float> x(9 * 13);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::cos(float(i)) * 3;
  for (dtype type : every_dtype) {
    for (std::int64_t rows : {9, 0}) {
      SCOPED_TRACE(std::string(to_string(type)) + " rows " + std::to_string(rows));
      const compressed_table t = quantize({x.data(), rows, 13, 0}, type);
      write_embag(path("t.embag"), t.view());
      const std::string file = dir_.read("t.embag");
      ASSERT_EQ(file.size(), 64 + rows * t.row_bytes());
      // the header, field by field
      EXPECT_EQ(file.substr(0, 8), "EMBAGTBL");
      const auto u32 = [&](std::size_t at) { std::uint32_t v; std::memcpy(&v, file.data() + at, 4); return v; };
      const auto u64 = [&](std::size_t at) { std::uint64_t v; std::memcpy(&v, file.data() + at, 8); return v; };
      EXPECT_EQ(u32(8), 1u);
      EXPECT_EQ(u32(12), static_cast<std::uint32_t>(type));
      EXPECT_EQ(u64(16), std::uint64_t(rows));
      EXPECT_EQ(u64(24), 13u);
      EXPECT_EQ(u64(32), std::uint64_t(t.row_bytes()));
      EXPECT_EQ(u64(40), 64u);
      EXPECT_EQ(file.substr(48, 16), std::string(16, '\0'));
      for (compressed_table::load how : {compressed_table::load::map, compressed_table::load::copy}) {
        const compressed_table back = compressed_table::open(path("t.embag"), how);
        EXPECT_EQ(back.mapped(), how == compressed_table::load::map);
        EXPECT_EQ(back.element_type(), type);
        EXPECT_EQ(back.rows(), rows);
        EXPECT_EQ(back.dim(), 13);
        EXPECT_EQ(back.row_bytes(), t.row_bytes());
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(back.view().data) % 64, 0u);
        EXPECT_EQ(std::memcmp(back.view().data, t.view().data, static_cast<std::size_t>(rows * t.row_bytes())), 0);
        EXPECT_EQ(dequantized(back.view()), dequantized(t.view()));
      }
    }
  }
}

// An .embag file from its fields; data_bytes of 0x5a follow the header at `offset`.
std::string embag_file(std::uint64_t rows, std::uint64_t dim, std::uint64_t bytes, std::uint32_t type = 3,
                       std::uint64_t offset = 64, std::size_t data_bytes = 0, std::uint32_t version = 1) {
  std::string header(std::max<std::size_t>(48, std::min<std::uint64_t>(offset, 4096)), '\0');
  std::memcpy(header.data(), "EMBAGTBL", 8);
  std::memcpy(header.data() + 8, &version, 4);
  std::memcpy(header.data() + 12, &type, 4);
  const std::uint64_t fields[] = {rows, dim, bytes, offset};
  std::memcpy(header.data() + 16, fields, 32);
  return header + std::string(data_bytes, '\x5a');
}

TEST_F(EmbagFiles, MalformedFilesAreBadFileErrorsNamingFileAndProblem) {
  const std::string good = embag_file(3, 4, 12, 3, 64, 36);
  struct malformed_case {
    const char* what;
    std::string bytes;
    const char* message;
  };
  const malformed_case cases[] = {
      {"empty", "", "truncated: the file has 0 bytes, the .embag header needs 48"},
      {"wrong magic", "\x93NUMPY\x01\x00 a .npy file, not a table", "not an .embag file: it does not start with EMBAGTBL"},
      {"magic cut short", "EMBAG", "truncated: the file has 5 bytes"},
      {"header cut short", good.substr(0, 47), "truncated: the file has 47 bytes"},
      {"version 0", embag_file(3, 4, 12, 3, 64, 36, 0), "unsupported .embag version 0"},
      {"version 2", embag_file(3, 4, 12, 3, 64, 36, 2), "unsupported .embag version 2"},
      {"unknown dtype", embag_file(3, 4, 12, 5, 64, 36), "unknown dtype code 5"},
      {"huge dtype code", embag_file(3, 4, 12, 0x103, 64, 36), "unknown dtype code 259"},
      {"rows past 63 bits", embag_file(std::uint64_t{1} << 63, 4, 12, 3, 64, 36), "rows = 9223372036854775808 does not fit"},
      {"dim 0", embag_file(3, 0, 8, 3, 64, 36), "dim is 0"},
      {"dim overflowing a row", embag_file(3, std::uint64_t{1} << 62, 12, 0, 64, 36), "a f32 row of dim 4611686018427387904 overflows"},
      {"row bytes for another dtype", embag_file(3, 4, 8, 3, 64, 36), "row bytes 8 do not match dtype int8_rowwise and dim 4, which need 12"},
      {"row bytes for another dim", embag_file(3, 4, 12, 4, 64, 36), "row bytes 12 do not match dtype int4_rowwise and dim 4, which need 6"},
      {"data offset not aligned", embag_file(3, 4, 12, 3, 56, 36), "data offset 56 is not a multiple of 64"},
      {"data offset inside the header", embag_file(3, 4, 12, 3, 0, 36), "data offset 0 is not a multiple of 64"},
      {"data offset past the end", embag_file(3, 4, 12, 3, 1 << 20, 0), "data offset 1048576 is past the end of the file"},
      {"size overflowing", embag_file(std::uint64_t{1} << 62, 4, 12, 3, 64, 36), "4611686018427387904 rows of 12 bytes overflow 64 bits"},
      {"data truncated by one byte", embag_file(3, 4, 12, 3, 64, 35), "truncated data: 3 rows of 12 bytes need 36 bytes, the file has 35"},
      {"no data", embag_file(3, 4, 12, 3, 64, 0), "need 36 bytes, the file has 0"},
      {"trailing bytes", embag_file(3, 4, 12, 3, 64, 37), "1 bytes after the 3 rows of 12 bytes"},
  };
  for (const malformed_case& c : cases) {
    SCOPED_TRACE(c.what);
    dir_.write("bad.embag", c.bytes);
    for (compressed_table::load how : {compressed_table::load::map, compressed_table::load::copy}) {
      try {
        compressed_table::open(path("bad.embag"), how);
        ADD_FAILURE() << "accepted";
      } catch (const error& e) {
        EXPECT_EQ(e.code(), errc::bad_file) << e.what();
        EXPECT_EQ(std::string(e.what()).rfind(path("bad.embag") + ": ", 0), 0u) << e.what();
        EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
      }
    }
    try {
      compressed_table::from_bytes(std::as_bytes(std::span(c.bytes)), "bytes");
      ADD_FAILURE() << "from_bytes accepted it";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::bad_file) << e.what();
      EXPECT_EQ(std::string(e.what()).rfind("bytes: ", 0), 0u) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    }
  }
  dir_.write("good.embag", good);
  EXPECT_EQ(compressed_table::open(path("good.embag")).rows(), 3) << "the catalogue's base file is valid";
}

TEST_F(EmbagFiles, FromBytesAndOpenAgree) {
  std::vector<float> x(5 * 9);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(float(i)) * 7;
  for (dtype type : every_dtype) {
    SCOPED_TRACE(to_string(type));
    write_embag(path("t.embag"), quantize({x.data(), 5, 9, 0}, type).view());
    const std::string file = dir_.read("t.embag");
    const compressed_table from_memory = compressed_table::from_bytes(std::as_bytes(std::span(file)), "t.embag");
    EXPECT_FALSE(from_memory.mapped());
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(from_memory.view().data) % 64, 0u);
    for (compressed_table::load how : {compressed_table::load::map, compressed_table::load::copy}) {
      const compressed_table opened = compressed_table::open(path("t.embag"), how);
      EXPECT_EQ(from_memory.element_type(), opened.element_type());
      EXPECT_EQ(from_memory.rows(), opened.rows());
      EXPECT_EQ(from_memory.dim(), opened.dim());
      EXPECT_EQ(from_memory.row_bytes(), opened.row_bytes());
      EXPECT_EQ(std::memcmp(from_memory.view().data, opened.view().data, static_cast<std::size_t>(5 * opened.row_bytes())), 0);
    }
  }
  // One malformed file (a row short), both ways: the same error, naming what each was given.
  const std::string bad = embag_file(3, 4, 12, 3, 64, 24);
  dir_.write("bad.embag", bad);
  std::string messages[2];
  try {
    compressed_table::from_bytes(std::as_bytes(std::span(bad)), "in memory");
    ADD_FAILURE() << "from_bytes accepted it";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::bad_file) << e.what();
    messages[0] = e.what();
  }
  try {
    compressed_table::open(path("bad.embag"));
    ADD_FAILURE() << "open accepted it";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::bad_file) << e.what();
    messages[1] = e.what();
  }
  EXPECT_EQ(messages[0], "in memory: truncated data: 3 rows of 12 bytes need 36 bytes, the file has 24");
  EXPECT_EQ(messages[1], path("bad.embag") + ": truncated data: 3 rows of 12 bytes need 36 bytes, the file has 24");
  EXPECT_THROW(compressed_table::from_bytes({}, "empty"), error);
}

TEST_F(EmbagFiles, MissingFilesAndFailedWrites) {
  for (const std::string name : {"absent.embag", "no/such/dir/t.embag"}) {
    try {
      compressed_table::open(path(name));
      ADD_FAILURE() << "opened";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::io_error);
      EXPECT_NE(std::string(e.what()).find(path(name) + ": cannot open: No such file or directory"), std::string::npos) << e.what();
    }
  }
  const float x[4] = {1, 2, 3, 4};
  const compressed_table t = quantize({x, 2, 2, 0}, dtype::f16);
  try {
    write_embag(path("no/such/dir/t.embag"), t.view());
    ADD_FAILURE() << "written";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::io_error);
  }
  dir_.write("t.embag", "an earlier table");
  EXPECT_THROW(write_embag(path("t.embag"), {nullptr, 2, 2, 0, dtype::f16}), error);
  EXPECT_EQ(dir_.read("t.embag"), "an earlier table");
  EXPECT_EQ(dir_.listing(), std::set<std::string>{"t.embag"}) << "no temporary file left";
}

// ---------------------------------------------------------------------------------------------
// <f2 .npy files.

TEST_F(EmbagFiles, NpyHalvesRoundTripAndConvertFromBigEndian) {
  const std::uint16_t halves[6] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x7e00, 0x8000};
  write_npy(path("h.npy"), npy_dtype::f16, std::vector<std::int64_t>{2, 3}, halves);
  EXPECT_NE(dir_.read("h.npy").find("'descr': '<f2'"), std::string::npos);
  for (npy_array::load how : {npy_array::load::map, npy_array::load::copy}) {
    const npy_array a = npy_array::open(path("h.npy"), how);
    EXPECT_EQ(a.dtype(), npy_dtype::f16);
    EXPECT_EQ(a.shape(), (std::vector<std::int64_t>{2, 3}));
    EXPECT_EQ(std::memcmp(a.data(), halves, sizeof halves), 0);
    EXPECT_THROW(a.as_table(), error);
    EXPECT_THROW(a.as_indices(), error);
  }
  std::string big = dir_.read("h.npy");
  big.replace(big.find("<f2"), 3, ">f2");
  for (std::size_t i = big.size() - 12; i < big.size(); i += 2) std::swap(big[i], big[i + 1]);
  dir_.write("big.npy", big);
  const npy_array b = npy_array::open(path("big.npy"));
  EXPECT_FALSE(b.mapped());
  EXPECT_EQ(std::memcmp(b.data(), halves, sizeof halves), 0);
}

}  // namespace
}  // namespace embag
