// Compressed tables for inference: fp16, bf16, 8-bit and 4-bit rowwise rows, their conversion from
// and to fp32, the .embag file that stores them, and forward on them (dequantising inside the SIMD
// kernels).
//
// Row layouts, little-endian, rows packed one after another (row r at data + r * row_stride):
//
//   f32           D x fp32                                        4 D bytes
//   f16           D x IEEE binary16                               2 D bytes
//   bf16          D x bfloat16 (the upper 16 bits of an fp32)     2 D bytes
//   int8_rowwise  D x uint8 q, fp32 scale, fp32 bias              D + 8 bytes
//                 (scale at byte D, bias at byte D + 4)
//   int4_rowwise  ceil(D / 2) bytes of 4-bit q: element j in byte j / 2, the low nibble for even j,
//                 the high nibble for odd j (a last odd element leaves the high nibble 0);
//                 then fp16 scale, fp16 bias                      ceil(D / 2) + 4 bytes
//
// The rowwise formats dequantise as x' = q * scale + bias, in fp32, rounded once (std::fma). They are FBGEMM's "fused 8-bit
// rowwise" (FloatToFused8BitRowwiseQuantizedSBFloat) and "fused n-bit rowwise" with bit rate 4
// (FloatToFusedNBitRowwiseQuantizedSBHalf) layouts byte for byte, so rows FBGEMM quantised load
// as they are; its fp16 tables are the f16 layout. (FBGEMM's table-batched inference module puts
// an fp16 scale and bias at the start of each padded row instead: that is not one of these
// layouts.)
//
// Quantisation, per element x of a row with min, max and M = max |x| (u = 2^-24):
//
//   f16, bf16     round to nearest, ties to even. |x - x'| <= 2^-11 |x| (f16) or 2^-8 |x| (bf16),
//                 and at most half the subnormal spacing below the normal range (2^-25 for f16
//                 below 2^-14, 2^-134 for bf16 below 2^-126). Inf and NaN carry over (NaN stays a
//                 NaN). A finite x that would round to infinity (|x| >= 65520 for f16) is an error.
//   int8_rowwise  bias = min; scale = (max - min) / 255 rounded up to an fp32 (0 for a constant
//                 row); q = round((x - bias) / scale), so that no element clamps.
//   int4_rowwise  bias = min rounded down to an fp16; scale = (max - bias) / 15 rounded up to an
//                 fp16 (0 when max == bias); q = round((x - bias) / scale). Rounding bias down and
//                 scale up keeps every x inside [bias, bias + 15 scale]: nothing clamps (FBGEMM
//                 rounds both to nearest and clamps, which can cost up to half an fp16 ulp of min
//                 more).
//
//   Both rowwise formats: |x - x'| <= (1 + 2^-22) scale / 2 + 2^-22 M, with the scale as stored.
//   The scale/2 is the rounding of q; the rest is fp32 rounding of q * scale + bias (at most
//   u |q scale| + u |x'|, and |q scale| <= 2 M), whether or not the multiply-add is fused. The
//   stored scale exceeds the ideal (max - min) / levels by the rounding up: at most one fp32 ulp
//   for int8; for int4 one fp16 ulp (2^-10 relative, or 2^-24 absolute for subnormal fp16
//   scales, i.e. ranges below 15 x 2^-14) plus (min - bias) / 15 < one fp16 ulp of min / 15.
//   Rows they cannot represent are errors (errc::invalid_option, naming row, column and value):
//   a NaN or Inf; for int8, |x| > 2^126 (q * scale + bias could overflow fp32); for int4, min
//   below -65504 or (max - bias) / 15 above 65504 (beyond fp16).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "embag/embag.hpp"
#include "embag/npy.hpp"

namespace embag {

// The one spelling of each dtype, in the library, the C ABI and the tool: "f32", "f16", "bf16",
// "int8_rowwise", "int4_rowwise". dtype_from_string also takes the short forms "fp32", "fp16",
// "int8" and "int4" (the names FBGEMM and PyTorch users type).
std::string_view to_string(dtype type) noexcept;
std::optional<dtype> dtype_from_string(std::string_view name) noexcept;

// Bytes of one packed row of `dim` elements (the table above). Throws errc::invalid_shape for
// dim <= 0, errc::invalid_option for a value that is not a dtype, errc::size_overflow past 2^62.
std::int64_t row_bytes(dtype type, std::int64_t dim);

// A non-owning, read-only view of a table of rows in one of the layouts above.
struct compressed_table_view {
  const std::byte* data = nullptr;
  std::int64_t rows = 0;
  std::int64_t dim = 0;
  std::int64_t row_stride = 0;  // in bytes, >= row_bytes(element_type, dim); 0 means row_bytes(...)
  dtype element_type = dtype::f32;
};

// An owning compressed table: rows packed (row_stride == row_bytes, as FBGEMM packs them, no
// padding per row), the data 64-byte aligned; 2 MiB aligned and advised to use huge pages when
// large, as embag::table is. Made by quantize() or read from an .embag file.
class compressed_table {
 public:
  using load = npy_array::load;  // map (read-only, huge-page advice) or copy, as for .npy files

  // Reads an .embag file (see write_embag). A missing or unreadable file is errc::io_error; a
  // malformed one (magic, version, dtype, sizes, row bytes, data offset, truncated or trailing
  // data) errc::bad_file, naming the file and the problem.
  static compressed_table open(const std::string& path, load how = load::map);
  // The same parse of a whole .embag file already in memory, its rows copied; `name` is what
  // errors call it.
  static compressed_table from_bytes(std::span<const std::byte> file, const std::string& name);

  compressed_table(compressed_table&&) noexcept;
  compressed_table& operator=(compressed_table&&) noexcept;
  ~compressed_table();

  compressed_table_view view() const noexcept;
  std::int64_t rows() const noexcept;
  std::int64_t dim() const noexcept;
  dtype element_type() const noexcept;
  std::int64_t row_bytes() const noexcept;
  bool mapped() const noexcept;  // false when owned (quantised, or read with load::copy)

 private:
  struct impl;
  explicit compressed_table(std::unique_ptr<impl> p) noexcept;
  friend compressed_table quantize(table_view<const float>, dtype, const execution&);
  std::unique_ptr<impl> impl_;
};

// The table in `to`'s layout, converted in parallel over blocks of rows (threads as `how` allows:
// max_threads, arena); bitwise the same whatever the thread count. Errors: a table view
// validate rejects (shape, null, alignment), a row the format cannot hold (above).
compressed_table quantize(table_view<const float> table, dtype to, const execution& how = {});

// out (table.rows x table.dim) = the fp32 values of the rows. All checks (shapes, strides, an out
// overlapping the compressed bytes) come before the first write.
void dequantize(compressed_table_view table, table_view<float> out, const execution& how = {});

// Y = A.W on a compressed table: every mode (sum, mean, max with argmax, none), per-sample weights,
// padding_idx, every bag layout and ISA, as forward on an fp32 table (embag.hpp). Each row is
// dequantised inside the kernel to the fp32 values dequantize() gives and accumulated in fp32, so
// the output is bit for bit forward on dequantize(table). max_norm is an error
// (errc::invalid_option): clipping needs fp32 rows, and in place would write the table.
void forward(compressed_table_view table, const bags& batch, const options& opts, matrix_view<float> out,
             std::span<std::int64_t> argmax = {}, workspace* scratch = nullptr);

// The .embag file, little-endian:
//   offset  0  magic "EMBAGTBL"        offset 24  dim (u64)
//   offset  8  version (u32) = 1       offset 32  row bytes (u64) = row_bytes(dtype, dim)
//   offset 12  dtype (u32, the value   offset 40  data offset (u64): a multiple of 64, >= 48
//              of embag::dtype)
//   offset 16  rows (u64)
// then zero bytes up to the data offset, then the rows packed, and nothing after them. Written to
// `path` + a unique suffix, then renamed over `path` (an output_group of one file, embag/npy.hpp:
// the same checks of the target): a failed write leaves no file, and replacing a mapped table's
// file this way is safe for its readers.
void write_embag(const std::string& path, compressed_table_view table);
// The same file staged into a group of outputs written all or none.
void stage_embag(output_group& outputs, const std::string& path, compressed_table_view table);

}  // namespace embag
