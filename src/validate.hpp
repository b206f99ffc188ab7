// Validation: every check a call needs, run before its first write. Each function throws
// embag::error naming the argument, the position and the value; none writes anything.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "embag/quantize.hpp"
#include "limits.hpp"
#include "request.hpp"

namespace embag::detail {

// The bytes `rows` strided rows span (rows - 1 strides, then one row of row_units), in units of
// unit_bytes; nothing when that overflows or passes max_array_bytes.
std::optional<std::int64_t> span_bytes(std::int64_t rows, std::int64_t stride_units, std::int64_t row_units,
                                       std::int64_t unit_bytes);

// A matrix or table shape: rows >= 0, cols > 0, stride >= cols (0 means cols), byte size in range,
// data non-null and aligned to its elements (floats unless said) when it has rows. Returns the
// effective row stride.
std::int64_t validate_matrix(const char* name, const void* data, std::int64_t rows, std::int64_t cols,
                             std::int64_t row_stride, std::int64_t element_bytes = 4);

// The options that do not depend on the bags; returns padding_idx normalised to [0, rows) or
// no_padding.
std::int64_t validate_options(const options& opts, std::int64_t table_rows);
void validate_execution(const execution& how);  // validate_options' checks of opts.execution
bool default_execution(const execution& how) noexcept;  // every field at its default

// An array of `size` elements: size >= 0, byte size in range, data non-null and aligned to its
// elements when it has any.
void validate_array(const char* name, const void* data, std::int64_t size, std::int64_t element_bytes);

// An int32/int64 array whose every value must be in [0, table_rows).
void validate_indices(const char* name, const index_span& indices, std::int64_t table_rows);

// What a call's index policies (options.bad_indices, pruned_ids, remap) skipped, and where
// options.report wants it: publish() writes it once the whole call is valid.
struct index_census {
  index_report found;
  index_report* report = nullptr;
  // memcpy: the C ABI's report is an embag_index_report, the same bytes under another type
  void publish() const noexcept {
    if (report != nullptr) std::memcpy(static_cast<void*>(report), &found, sizeof found);
  }
};

// Whether the options ask for any index policy (then the indices may be read from a rewrite).
bool has_index_policies(const options& opts) noexcept;

// Bag boundaries, per-sample weights and indices against the options. Without index policies every
// index must be in [0, table_rows) and the caller's indices are read in place. With them, a call
// that has something to skip or remap reads `rewritten` instead: int64 rows, each skipped
// position set to `padding` (validate_options' result), so that the kernels skip it as padding;
// census receives what was skipped.
bag_source validate_bags(const bags& batch, const options& opts, std::int64_t table_rows, std::int64_t padding,
                         std::vector<std::int64_t>& rewritten, index_census& census);

// An output (or gradient) matrix for `rows_needed` x `dim`; returns its effective stride.
std::int64_t validate_output(const char* name, const matrix_view<float>& out, std::int64_t rows_needed,
                             std::int64_t dim);
// The same for a forward's output of any element type (f32, f16, bf16).
std::int64_t validate_output(const char* name, const output_view& out, std::int64_t rows_needed, std::int64_t dim);
// Bytes per element of an output type, 0 for a dtype that is none.
std::int64_t output_element_bytes(dtype type) noexcept;
std::int64_t validate_input(const char* name, const matrix_view<const float>& in, std::int64_t rows_needed,
                            std::int64_t dim);

// argmax of mode max, as forward writes it (size rows x dim) or backward reads it (each value -1 or
// an index of its own bag, -1 exactly for bags without a non-padding index).
void validate_argmax_size(std::span<const std::int64_t> argmax, const options& opts, std::int64_t rows,
                          std::int64_t dim);
void validate_argmax_values(std::span<const std::int64_t> argmax, const bag_source& bags,
                            std::int64_t padding_idx, std::int64_t dim);

// No output may overlap an input or another output: byte ranges [begin, end).
struct byte_range {
  const char* name;
  const void* begin;
  std::int64_t bytes;
};
void validate_disjoint(std::span<const byte_range> outputs, std::span<const byte_range> inputs);
bool overlap(const byte_range& a, const byte_range& b) noexcept;  // any byte in common
byte_range matrix_bytes(const char* name, const void* data, std::int64_t rows, std::int64_t cols,
                        std::int64_t row_stride, std::int64_t element_bytes = 4);

// A written matrix: rows x cols elements of element_bytes, row r at data + r * stride elements.
struct output_cells {
  const void* data;
  std::int64_t rows, cols, stride, element_bytes;

  byte_range bytes(const char* name) const { return matrix_bytes(name, data, rows, cols, stride, element_bytes); }
};
// Whether two written matrices share a cell (not merely bytes: see validate.cpp).
bool share_a_cell(const output_cells& a, const output_cells& b) noexcept;

// A range one table of a batched call reads or writes; a written matrix carries its cells.
struct table_range {
  std::size_t table;
  byte_range bytes;
  std::optional<output_cells> cells;
};
// Across a batched call's tables: no table writes a byte any table reads, and no two tables write
// a common byte (a common cell, for two matrices: outputs side by side in one buffer, a
// KeyedTensor's tables, overlap as bytes but not as cells). Sorts both by address: O(n log n),
// plus the pairs of written ranges whose bytes overlap. An error names both tables and ranges.
void validate_tables_disjoint(std::vector<table_range>& reads, std::vector<table_range>& writes);

// A compressed table view (embag/quantize.hpp): a dtype, rows >= 0, a stride (bytes) of at least
// row_bytes, in range, non-null. Returns the effective row stride in bytes.
std::int64_t validate_compressed(const char* name, const compressed_table_view& t);

}  // namespace embag::detail
