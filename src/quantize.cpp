// Compressed row formats: scalar, portable conversions from and to fp32 (plain bit manipulation;
// the SIMD dequantisation belongs in the per-ISA kernels), quantize / dequantize over blocks of
// rows, and the .embag file.
#include "embag/quantize.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "allocation.hpp"
#include "file_io.hpp"
#include "parallel.hpp"
#include "plan.hpp"
#include "rows.hpp"
#include "validate.hpp"

namespace embag {

static_assert(std::endian::native == std::endian::little, "compressed rows are little-endian in memory and on disk");

namespace {

using detail::malformed;

std::string str(std::int64_t v) { return std::to_string(v); }
std::string str(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", v);
  return text;
}

// ---------------------------------------------------------------------------------------------
// fp16 and bf16, round to nearest even.

// m / 2^shift rounded to nearest, ties to even (shift in [1, 31]).
std::uint32_t shift_right_rounded(std::uint32_t m, int shift) {
  const std::uint32_t q = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  return q + (rest > half || (rest == half && (q & 1)));
}

constexpr std::uint16_t f16_infinity = 0x7c00;
constexpr std::uint16_t f16_largest = 0x7bff;  // 65504

std::uint16_t f16_from_float(float x) {
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

float float_from_f16(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t{h & 0x8000u} << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1f, fraction = h & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000 | fraction << 13);
  if (exponent == 0) {  // zero or subnormal: fraction * 2^-24, exact in fp32
    const float magnitude = std::ldexp(static_cast<float>(fraction), -24);
    return sign ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | (exponent + 127 - 15) << 23 | fraction << 13);
}

std::uint16_t bf16_from_float(float x) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  // NaN: keep the top bits and force the quiet bit, so that a payload only in the dropped bits
  // does not turn into Inf
  if ((bits & 0x7fffffff) > 0x7f800000) return static_cast<std::uint16_t>((bits >> 16) | 0x0040);
  return static_cast<std::uint16_t>((bits >> 16) + ((bits & 0xffff) > 0x8000 || ((bits & 0xffff) == 0x8000 && (bits >> 16 & 1))));
}

float float_from_bf16(std::uint16_t b) { return std::bit_cast<float>(std::uint32_t{b} << 16); }

// The nearest fp16 at or below (up = false) or at or above (up = true) a finite x within fp16's
// range, as an fp32.
float f16_rounded(float x, bool up) {
  const std::uint16_t h = f16_from_float(x);
  const float nearest = float_from_f16(h);
  if (nearest == x || (up ? nearest > x : nearest < x)) return nearest;
  // One fp16 step in the direction asked; bit patterns are ordered by magnitude within a sign.
  if (nearest == 0.0f) return up ? 0x1p-24f : -0x1p-24f;
  const bool larger_magnitude = (nearest > 0.0f) == up;
  return float_from_f16(static_cast<std::uint16_t>(larger_magnitude ? h + 1 : h - 1));
}

// ---------------------------------------------------------------------------------------------
// Rows.

template <class T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
void store(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

// Why a row cannot be stored, at which column.
struct row_problem {
  std::int64_t column = 0;
  const char* reason = "";
};

std::optional<row_problem> encode_halves(const float* x, std::int64_t dim, std::byte* out, bool bf16) {
  for (std::int64_t d = 0; d < dim; ++d) {
    const std::uint16_t h = bf16 ? bf16_from_float(x[d]) : f16_from_float(x[d]);
    if (std::isfinite(x[d]) && (h & 0x7fff) == (bf16 ? 0x7f80 : f16_infinity))
      return row_problem{d, bf16 ? "rounds to infinity in bf16" : "is beyond fp16's range (|x| >= 65520 rounds to infinity)"};
    store(out + 2 * d, h);
  }
  return std::nullopt;
}

// The row's min and max, or the first element that is not finite.
struct row_range {
  float min = 0, max = 0;
  std::int64_t min_column = 0, max_column = 0;
};
std::optional<row_problem> find_range(const float* x, std::int64_t dim, row_range& r) {
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

std::optional<row_problem> encode_int8(const float* x, std::int64_t dim, std::byte* out) {
  row_range r;
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

std::optional<row_problem> encode_int4(const float* x, std::int64_t dim, std::byte* out) {
  row_range r;
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

std::optional<row_problem> encode_row(dtype type, const float* x, std::int64_t dim, std::byte* out) {
  switch (type) {
    case dtype::f32: std::memcpy(out, x, static_cast<std::size_t>(dim) * 4); return std::nullopt;
    case dtype::f16: return encode_halves(x, dim, out, false);
    case dtype::bf16: return encode_halves(x, dim, out, true);
    case dtype::int8_rowwise: return encode_int8(x, dim, out);
    case dtype::int4_rowwise: return encode_int4(x, dim, out);
  }
  return std::nullopt;
}

// row_bytes, or nullopt when dim is too large (the rows would exceed 2^62 bytes each).
std::optional<std::int64_t> packed_row_bytes(dtype type, std::int64_t dim) {
  if (dim > detail::max_array_bytes / 4) return std::nullopt;
  switch (type) {
    case dtype::f32: return 4 * dim;
    case dtype::f16:
    case dtype::bf16: return 2 * dim;
    case dtype::int8_rowwise: return dim + 8;
    case dtype::int4_rowwise: return (dim + 1) / 2 + 4;
  }
  return std::nullopt;
}

}  // namespace

namespace detail {

void decode_row(dtype type, const std::byte* row, std::int64_t dim, float* out) noexcept {
  switch (type) {
    case dtype::f32: std::memcpy(out, row, static_cast<std::size_t>(dim) * 4); return;
    case dtype::f16:
      for (std::int64_t d = 0; d < dim; ++d) out[d] = float_from_f16(load<std::uint16_t>(row + 2 * d));
      return;
    case dtype::bf16:
      for (std::int64_t d = 0; d < dim; ++d) out[d] = float_from_bf16(load<std::uint16_t>(row + 2 * d));
      return;
    case dtype::int8_rowwise: {
      const auto scale = load<float>(row + dim), bias = load<float>(row + dim + 4);
      for (std::int64_t d = 0; d < dim; ++d) out[d] = static_cast<float>(std::to_integer<int>(row[d])) * scale + bias;
      return;
    }
    case dtype::int4_rowwise: {
      const std::int64_t packed = (dim + 1) / 2;
      const float scale = float_from_f16(load<std::uint16_t>(row + packed));
      const float bias = float_from_f16(load<std::uint16_t>(row + packed + 2));
      for (std::int64_t d = 0; d < dim; ++d)
        out[d] = static_cast<float>((std::to_integer<int>(row[d / 2]) >> (4 * (d % 2))) & 15) * scale + bias;
      return;
    }
  }
}

}  // namespace detail

std::string_view to_string(dtype type) noexcept {
  switch (type) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
    case dtype::int8_rowwise: return "int8_rowwise";
    case dtype::int4_rowwise: return "int4_rowwise";
  }
  return "?";
}

std::optional<dtype> dtype_from_string(std::string_view name) noexcept {
  static constexpr std::pair<std::string_view, dtype> short_forms[] = {
      {"fp32", dtype::f32}, {"fp16", dtype::f16}, {"int8", dtype::int8_rowwise}, {"int4", dtype::int4_rowwise}};
  for (dtype type : all_dtypes)
    if (to_string(type) == name) return type;
  for (const auto& [alias, type] : short_forms)
    if (alias == name) return type;
  return std::nullopt;
}

std::int64_t row_bytes(dtype type, std::int64_t dim) {
  if (!detail::is_dtype(type)) throw error(errc::invalid_option, "dtype " + str(std::int64_t(type)) + " is not a dtype");
  if (dim <= 0) throw error(errc::invalid_shape, "dim " + str(dim) + " must be > 0");
  const std::optional<std::int64_t> bytes = packed_row_bytes(type, dim);
  if (!bytes)
    throw error(errc::size_overflow, "a " + std::string(to_string(type)) + " row of dim " + str(dim) + " overflows the address space");
  return *bytes;
}

// ---------------------------------------------------------------------------------------------
// The owning table.

struct compressed_table::impl {
  compressed_table_view view;
  detail::owned_bytes owned;      // set when the rows are in memory the table owns
  detail::file_mapping mapping;   // set when they are a mapped file's
};

compressed_table::compressed_table(std::unique_ptr<impl> p) noexcept : impl_(std::move(p)) {}
compressed_table::compressed_table(compressed_table&&) noexcept = default;
compressed_table& compressed_table::operator=(compressed_table&&) noexcept = default;
compressed_table::~compressed_table() = default;

compressed_table_view compressed_table::view() const noexcept { return impl_->view; }
std::int64_t compressed_table::rows() const noexcept { return impl_->view.rows; }
std::int64_t compressed_table::dim() const noexcept { return impl_->view.dim; }
dtype compressed_table::element_type() const noexcept { return impl_->view.element_type; }
std::int64_t compressed_table::row_bytes() const noexcept { return impl_->view.row_stride; }
bool compressed_table::mapped() const noexcept { return impl_->owned == nullptr; }

compressed_table quantize(table_view<const float> table, dtype to, const execution& how) {
  const std::int64_t stride = detail::validate_matrix("table", table.data, table.rows, table.dim, table.row_stride);
  if (!detail::is_dtype(to)) throw error(errc::invalid_option, "quantize to dtype " + str(std::int64_t(to)) + ": not a dtype");
  const std::int64_t bytes = row_bytes(to, table.dim);
  const std::optional<std::int64_t> total = detail::span_bytes(table.rows, bytes, bytes, 1);
  if (!total)
    throw error(errc::size_overflow, "quantize: " + str(table.rows) + " rows of " + str(bytes) + " bytes overflow the address space");

  auto p = std::make_unique<compressed_table::impl>();
  p->owned = detail::allocate_bytes(static_cast<std::size_t>(*total),
                                    "the " + std::string(to_string(to)) + " table of " + str(table.rows) + " rows");
  p->view = {p->owned.get(), table.rows, table.dim, bytes, to};
  detail::range_blocks blocks;
  detail::plan_even_blocks(table.rows, table.dim, detail::threads_for(how), blocks);
  // Each block stops at its first bad row; the error reported is the first of the whole table.
  struct block_problem {
    std::int64_t row = -1;
    row_problem problem;
  };
  std::array<block_problem, detail::max_blocks> problems;
  detail::run_blocks(blocks.count, how, [&](std::int64_t i) {
    for (std::int64_t r = blocks.blocks[i].begin; r < blocks.blocks[i].end; ++r) {
      if (auto problem = encode_row(to, table.data + r * stride, table.dim, p->owned.get() + r * bytes)) {
        problems[i] = {r, *problem};
        return;
      }
    }
  });
  for (int i = 0; i < blocks.count; ++i) {
    if (problems[i].row < 0) continue;
    const std::int64_t r = problems[i].row, c = problems[i].problem.column;
    throw error(errc::invalid_option, "quantize to " + std::string(to_string(to)) + ": table[" + str(r) + "][" + str(c) +
                                          "] = " + str(double(table.data[r * stride + c])) + " " + problems[i].problem.reason);
  }
  return compressed_table(std::move(p));
}

void dequantize(compressed_table_view table, table_view<float> out, const execution& how) {
  const std::int64_t stride = detail::validate_compressed("table", table);
  const std::int64_t out_stride = detail::validate_matrix("out", out.data, out.rows, out.dim, out.row_stride);
  if (out.rows != table.rows || out.dim != table.dim)
    throw error(errc::size_mismatch, "out is " + str(out.rows) + " x " + str(out.dim) + " but the table is " +
                                         str(table.rows) + " x " + str(table.dim));
  const std::int64_t bytes = row_bytes(table.element_type, table.dim);
  const detail::byte_range written[] = {detail::matrix_bytes("out", out.data, out.rows, out.dim, out_stride)};
  const detail::byte_range read[] = {{"table", table.data, table.rows == 0 ? 0 : (table.rows - 1) * stride + bytes}};
  detail::validate_disjoint(written, read);
  detail::range_blocks blocks;
  detail::plan_even_blocks(table.rows, table.dim, detail::threads_for(how), blocks);
  detail::run_blocks(blocks.count, how, [&](std::int64_t i) {
    for (std::int64_t r = blocks.blocks[i].begin; r < blocks.blocks[i].end; ++r)
      detail::decode_row(table.element_type, table.data + r * stride, table.dim, out.data + r * out_stride);
  });
}

// ---------------------------------------------------------------------------------------------
// The .embag file.

namespace {

constexpr char embag_magic[8] = {'E', 'M', 'B', 'A', 'G', 'T', 'B', 'L'};
constexpr std::uint32_t embag_version = 1;
constexpr std::size_t embag_header_bytes = 48;

struct embag_layout {
  compressed_table_view view;  // data is the offset of the rows in the file
  std::size_t data_offset = 0;
};

// Every field checked against the others and against the file's size.
embag_layout parse_embag(std::span<const std::byte> file, const std::string& name) {
  const std::size_t size = file.size();
  if (std::memcmp(file.data(), embag_magic, std::min(size, sizeof embag_magic)) != 0)
    malformed(name, "not an .embag file: it does not start with EMBAGTBL");
  if (size < embag_header_bytes)
    malformed(name, "truncated: the file has " + str(std::int64_t(size)) + " bytes, the .embag header needs 48");
  const auto version = load<std::uint32_t>(file.data() + 8), type = load<std::uint32_t>(file.data() + 12);
  if (version != embag_version) malformed(name, "unsupported .embag version " + str(std::int64_t(version)) + " (embag reads 1)");
  if (type > std::uint32_t(dtype::int4_rowwise))
    malformed(name, "unknown dtype code " + str(std::int64_t(type)) + " (0 f32, 1 f16, 2 bf16, 3 int8_rowwise, 4 int4_rowwise)");
  std::int64_t fields[4];
  const char* names[4] = {"rows", "dim", "row bytes", "data offset"};
  for (int i = 0; i < 4; ++i) {
    const auto v = load<std::uint64_t>(file.data() + 16 + 8 * i);
    if (v > std::uint64_t(std::numeric_limits<std::int64_t>::max()))
      malformed(name, std::string(names[i]) + " = " + std::to_string(v) + " does not fit in 63 bits");
    fields[i] = static_cast<std::int64_t>(v);
  }
  const auto [rows, dim, stride, offset] = fields;
  const dtype element = static_cast<dtype>(type);
  if (dim == 0) malformed(name, "dim is 0");
  const std::optional<std::int64_t> bytes = packed_row_bytes(element, dim);
  if (!bytes) malformed(name, "a " + std::string(to_string(element)) + " row of dim " + str(dim) + " overflows the address space");
  if (stride != *bytes)
    malformed(name, "row bytes " + str(stride) + " do not match dtype " + std::string(to_string(element)) + " and dim " +
                        str(dim) + ", which need " + str(*bytes));
  if (offset < std::int64_t(embag_header_bytes) || offset % std::int64_t(detail::file_data_alignment) != 0)
    malformed(name, "data offset " + str(offset) + " is not a multiple of 64 at or after the 48-byte header");
  if (std::uint64_t(offset) > size)
    malformed(name, "data offset " + str(offset) + " is past the end of the file (" + str(std::int64_t(size)) + " bytes)");
  std::int64_t data_bytes = 0;
  if (__builtin_mul_overflow(rows, stride, &data_bytes))
    malformed(name, str(rows) + " rows of " + str(stride) + " bytes overflow 64 bits");
  const auto available = static_cast<std::int64_t>(size - std::size_t(offset));
  if (available < data_bytes)
    malformed(name, "truncated data: " + str(rows) + " rows of " + str(stride) + " bytes need " + str(data_bytes) +
                        " bytes, the file has " + str(available));
  if (available > data_bytes)
    malformed(name, str(available - data_bytes) + " bytes after the " + str(rows) + " rows of " + str(stride) + " bytes");
  return {{nullptr, rows, dim, stride, element}, std::size_t(offset)};
}

// The rows of a whole .embag file in owned memory, parsed and moved to the start of the block
// (64-byte aligned, the header dropped).
compressed_table_view rows_to_start(std::byte* file, std::size_t size, const std::string& name) {
  const embag_layout layout = parse_embag({file, size}, name);
  std::memmove(file, file + layout.data_offset, size - layout.data_offset);
  compressed_table_view view = layout.view;
  view.data = file;
  return view;
}

}  // namespace

compressed_table compressed_table::from_bytes(std::span<const std::byte> file, const std::string& name) {
  auto p = std::make_unique<impl>();
  p->owned = detail::allocate_bytes(file.size(), "a copy of " + name);
  if (!file.empty()) std::memcpy(p->owned.get(), file.data(), file.size());
  p->view = rows_to_start(p->owned.get(), file.size(), name);
  return compressed_table(std::move(p));
}

compressed_table compressed_table::open(const std::string& path, load how) {
  auto [fd, size] = detail::open_regular_file(path);
  auto p = std::make_unique<impl>();
  if (how == load::copy || size == 0) {  // an empty file cannot be mapped; its parse fails
    p->owned = detail::read_whole_file(fd, size, path);
    p->view = rows_to_start(p->owned.get(), size, path);
    return compressed_table(std::move(p));
  }
  p->mapping = detail::map_whole_file(fd, size, path);
  const std::span<const std::byte> file = p->mapping.bytes();
  const embag_layout layout = parse_embag(file, path);
  if (size - layout.data_offset >= detail::huge_page)  // advice only
    madvise(const_cast<std::byte*>(file.data()), size, MADV_HUGEPAGE);
  p->view = layout.view;
  p->view.data = file.data() + layout.data_offset;
  return compressed_table(std::move(p));
}

void stage_embag(output_group& outputs, const std::string& path, compressed_table_view table) {
  const std::int64_t stride = detail::validate_compressed(path.c_str(), table);
  const std::int64_t bytes = row_bytes(table.element_type, table.dim);
  std::array<std::byte, detail::file_data_alignment> header{};
  std::memcpy(header.data(), embag_magic, sizeof embag_magic);
  store(header.data() + 8, embag_version);
  store(header.data() + 12, std::uint32_t(table.element_type));
  const std::uint64_t fields[4] = {std::uint64_t(table.rows), std::uint64_t(table.dim), std::uint64_t(bytes),
                                   std::uint64_t(header.size())};
  for (int i = 0; i < 4; ++i) store(header.data() + 16 + 8 * i, fields[i]);
  const auto data_bytes = static_cast<std::size_t>(table.rows * bytes);
  if (stride == bytes) return outputs.stage_bytes(path, {header, {table.data, data_bytes}});
  // Padded rows are packed first: the file holds packed rows only.
  std::vector<std::byte> packed = detail::allocated<std::byte>(data_bytes, path + ": the packed rows");
  for (std::int64_t r = 0; r < table.rows; ++r)
    std::memcpy(packed.data() + r * bytes, table.data + r * stride, static_cast<std::size_t>(bytes));
  outputs.stage_bytes(path, {header, packed});
}

void write_embag(const std::string& path, compressed_table_view table) {
  output_group outputs;
  stage_embag(outputs, path, table);
  outputs.commit();
}

}  // namespace embag
