#include "validate.hpp"

#include "dispatch/dispatch.hpp"

#include "allocation.hpp"
#include "embag/quantize.hpp"
#include "formats/formats.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>

namespace embag::detail {
namespace {

[[noreturn]] void fail(errc code, const std::string& message) { throw error(code, message); }

std::string str(std::int64_t v) { return std::to_string(v); }
std::string str(double v) {
  std::string s = std::to_string(v);
  if (std::isnan(v)) s = "nan";
  return s;
}

bool bytes_of(std::int64_t count, std::int64_t element_bytes, std::int64_t& bytes) {
  return !__builtin_mul_overflow(count, element_bytes, &bytes) && bytes <= max_array_bytes;
}

// Reading an element through a pointer not aligned to its type is undefined behaviour (SIMD and
// strict-alignment targets can fault), so such an array is rejected rather than read.
void check_aligned(const char* name, const void* data, std::int64_t element_bytes) {
  const auto address = reinterpret_cast<std::uintptr_t>(data);
  const auto offset = static_cast<std::int64_t>(address % static_cast<std::uintptr_t>(element_bytes));
  if (offset == 0) return;
  char hex[2 * sizeof address + 1];
  char* const hex_end = std::to_chars(hex, hex + sizeof hex, address, 16).ptr;
  fail(errc::misaligned, std::string(name) + " is misaligned by " + str(offset) + (offset == 1 ? " byte" : " bytes") +
                             " for its " + str(element_bytes) + "-byte elements (address 0x" +
                             std::string(hex, hex_end) + ")");
}

// A std::span's size is unsigned: one past INT64_MAX must not read as a negative count.
std::int64_t span_size(const char* name, std::size_t size) {
  if (size > static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max()))
    fail(errc::size_overflow,
         std::string(name) + " of " + std::to_string(size) + " elements overflows the address space");
  return static_cast<std::int64_t>(size);
}

}  // namespace

void validate_array(const char* name, const void* data, std::int64_t size, std::int64_t element_bytes) {
  std::int64_t bytes = 0;
  if (size < 0) fail(errc::invalid_shape, std::string(name) + " has negative size " + str(size));
  if (!bytes_of(size, element_bytes, bytes))
    fail(errc::size_overflow, std::string(name) + " of " + str(size) + " elements overflows the address space");
  if (data == nullptr && size > 0) fail(errc::null_pointer, std::string(name) + " is null but has size " + str(size));
  if (size > 0) check_aligned(name, data, element_bytes);
}

namespace {

std::int64_t element_bytes(const char* name, index_type t) {
  if (t != index_type::i32 && t != index_type::i64)
    fail(errc::invalid_option, std::string(name) + ".type = " + str(std::int64_t(t)) + " is not int32 or int64");
  return t == index_type::i32 ? 4 : 8;
}

// The fast path scans for the extremes at the ISA's width; only a failing call looks for the culprit.
template <class T>
void check_indices_typed(const char* name, const T* indices, std::int64_t n, std::int64_t rows) {
  const index_extremes e = scan_indices(indices, sizeof(T) == 4 ? index_type::i32 : index_type::i64, n);
  if (n == 0 || (e.lowest >= 0 && e.highest < rows)) return;
  for (std::int64_t j = 0; j < n; ++j)
    if (indices[j] < 0 || static_cast<std::int64_t>(indices[j]) >= rows)
      fail(errc::index_out_of_range, std::string(name) + "[" + str(j) + "] = " + str(static_cast<std::int64_t>(indices[j])) +
                                         " is out of range [0, " + str(rows) + ")");
}

// Whether the offsets, once valid, give every bag exactly one index.
bool check_offsets(const index_span& offsets, std::int64_t nnz, bool include_last) {
  const std::int64_t n = offsets.size;
  if (n == 0) {
    if (include_last) fail(errc::bad_offsets, "offsets is empty but include_last_offset needs at least one entry");
    if (nnz > 0) fail(errc::bad_offsets, "offsets is empty but indices has " + str(nnz) + " entries");
    return false;
  }
  // one pass at the ISA's width decides; only a failing call walks them to name the culprit
  const offsets_order order = scan_offsets(offsets.data, offsets.type, n, nnz);
  const std::int64_t last = element_at(offsets.data, offsets.type, n - 1);
  // rising from 0, n - 1 steps of at least one: one index each when the bags hold as many as there are bags
  if (order.in_order && !include_last) return order.rising && last == n - 1 && nnz == n;
  if (order.in_order && last == nnz) return order.rising && nnz == n - 1;
  if (const std::int64_t first = element_at(offsets.data, offsets.type, 0); first != 0)
    fail(errc::bad_offsets, "offsets[0] = " + str(first) + " must be 0");
  std::int64_t previous = 0;
  for (std::int64_t b = 1; b < n; ++b) {
    const std::int64_t o = element_at(offsets.data, offsets.type, b);
    if (o < previous)
      fail(errc::bad_offsets, "offsets[" + str(b) + "] = " + str(o) + " is less than offsets[" + str(b - 1) +
                                  "] = " + str(previous) + " (offsets must not decrease)");
    if (o > nnz)
      fail(errc::bad_offsets, "offsets[" + str(b) + "] = " + str(o) + " is past the end of indices (" + str(nnz) +
                                  " entries)");
    previous = o;
  }
  if (include_last && previous != nnz)
    fail(errc::bad_offsets, "offsets[" + str(n - 1) + "] = " + str(previous) +
                                " must equal len(indices) = " + str(nnz) + " with include_last_offset");
  return false;  // not reached: the scan failed, so the walk did
}

// Whether every bag has exactly one index.
bool check_lengths(const index_span& lengths, std::int64_t nnz) {
  std::int64_t total = 0, ones = 0;
  for (std::int64_t b = 0; b < lengths.size; ++b) {
    const std::int64_t len = element_at(lengths.data, lengths.type, b);
    ones += len == 1;
    if (len < 0) fail(errc::bad_lengths, "lengths[" + str(b) + "] = " + str(len) + " is negative");
    if (len > nnz - total)
      fail(errc::bad_lengths, "lengths[0.." + str(b) + "] sum past len(indices) = " + str(nnz) + " at lengths[" +
                                  str(b) + "] = " + str(len));
    total += len;
  }
  if (total != nnz)
    fail(errc::bad_lengths, "lengths sum to " + str(total) + " but indices has " + str(nnz) + " entries");
  return ones == lengths.size;
}

}  // namespace

std::optional<std::int64_t> span_bytes(std::int64_t rows, std::int64_t stride_units, std::int64_t row_units,
                                       std::int64_t unit_bytes) {
  std::int64_t units = 0, bytes = 0;
  if (rows <= 0) return 0;
  if (__builtin_mul_overflow(rows - 1, stride_units, &units) || __builtin_add_overflow(units, row_units, &units) ||
      !bytes_of(units, unit_bytes, bytes))
    return std::nullopt;
  return bytes;
}

std::int64_t validate_matrix(const char* name, const void* data, std::int64_t rows, std::int64_t cols,
                             std::int64_t row_stride, std::int64_t element_bytes) {
  const std::string n(name);
  if (rows < 0) fail(errc::invalid_shape, n + " has " + str(rows) + " rows (must be >= 0)");
  if (cols <= 0) fail(errc::invalid_shape, n + " has dim " + str(cols) + " (must be > 0)");
  const std::int64_t stride = row_stride == 0 ? cols : row_stride;
  if (stride < cols)
    fail(errc::invalid_shape, n + " has row_stride " + str(row_stride) + " smaller than its dim " + str(cols));
  if (rows > 0 && !span_bytes(rows, stride, cols, element_bytes))
    fail(errc::size_overflow, n + " of " + str(rows) + " rows x stride " + str(stride) +
                                  (element_bytes == 4 ? " floats" : " elements of " + str(element_bytes) + " bytes") +
                                  " overflows the address space");
  if (data == nullptr && rows > 0) fail(errc::null_pointer, n + " is null but has " + str(rows) + " rows");
  if (rows > 0) check_aligned(name, data, element_bytes);
  return stride;
}

void validate_execution(const execution& how) {
  if (how.prefetch.level > prefetch_level::l2_one_pass)
    fail(errc::invalid_option, "execution.prefetch.level = " + str(std::int64_t(how.prefetch.level)) +
                                   " is not a prefetch level");
  if (how.prefetch.rows < 0)
    fail(errc::invalid_option, "execution.prefetch.rows = " + str(std::int64_t{how.prefetch.rows}) + " must be >= 0");
  if (how.max_threads < 0)
    fail(errc::invalid_option, "execution.max_threads = " + str(std::int64_t{how.max_threads}) + " must be >= 0");
  if (how.arena != nullptr && how.max_threads != 0)
    fail(errc::invalid_option, "execution.max_threads = " + str(std::int64_t{how.max_threads}) +
                                   " with execution.arena: the arena's size is the limit, max_threads must be 0");
}

bool default_execution(const execution& how) noexcept {
  return how.max_threads == 0 && !how.isa && how.prefetch.level == prefetch_level::automatic &&
         how.prefetch.rows == 0 && how.arena == nullptr;
}

std::int64_t validate_options(const options& opts, std::int64_t table_rows) {
  if (to_string(opts.mode) == "unknown") fail(errc::invalid_option, "mode = " + str(std::int64_t(opts.mode)) + " is not a mode");
  if (opts.max_norm_mode > max_norm_flavour::in_place)
    fail(errc::invalid_option, "max_norm_mode = " + str(std::int64_t(opts.max_norm_mode)) + " is not a flavour");
  if (opts.max_norm) {
    const float m = *opts.max_norm;
    if (!(m > 0.0f)) fail(errc::invalid_option, "max_norm = " + str(double(m)) + " must be > 0");
    if (!(opts.norm_type > 0.0f))
      fail(errc::invalid_option, "norm_type = " + str(double(opts.norm_type)) + " must be > 0");
  }
  validate_execution(opts.execution);
  if (opts.bad_indices > bad_index_policy::skip)
    fail(errc::invalid_option, "bad_indices = " + str(std::int64_t(opts.bad_indices)) + " is not a bad_index_policy");
  if (opts.bad_indices == bad_index_policy::skip && opts.report == nullptr)
    fail(errc::invalid_option, "bad_indices = skip needs opts.report: what it skips is reported, never dropped unseen");
  if (opts.report != nullptr) check_aligned("report", opts.report, alignof(index_report));
  validate_array("remap", opts.remap.data, opts.remap.size, element_bytes("remap", opts.remap.type));
  if (has_index_policies(opts) && opts.max_norm && opts.max_norm_mode == max_norm_flavour::in_place)
    fail(errc::invalid_option, "max_norm in place takes no index policy (bad_indices = skip, pruned_ids, remap): "
                               "it would rescale the rows skipped indices stand in for");
  if (!opts.padding_idx) return no_padding;
  const std::int64_t p = *opts.padding_idx;
  if (p < -table_rows || p >= table_rows)
    fail(errc::invalid_option, "padding_idx = " + str(p) + " is out of range [" + str(-table_rows) + ", " +
                                   str(table_rows) + ")");
  return p < 0 ? p + table_rows : p;
}

bool has_index_policies(const options& opts) noexcept {
  return opts.bad_indices != bad_index_policy::error || opts.pruned_ids || opts.remap.data != nullptr ||
         opts.remap.size != 0;
}

namespace {

// The rows a call reads under its index policies, into `rows` (n int64 values): remap[id] or the id
// itself; `padding` for each position skipped, pruned or bad (bad_indices = error: the first bad
// one fails instead). Remap is null without a remap.
template <class Index, class Remap>
void rewrite_indices(const Index* indices, std::int64_t n, const Remap* remap, std::int64_t remap_size,
                     std::int64_t table_rows, const options& opts, std::int64_t padding, std::int64_t* rows,
                     index_report& found) {
  const std::int64_t limit = remap != nullptr ? remap_size : table_rows;
  for (std::int64_t j = 0; j < n; ++j) {
    const std::int64_t id = indices[j];
    std::int64_t row = id;
    bool pruned = id == -1 && opts.pruned_ids, bad = false;
    if (!pruned && (id < 0 || id >= limit)) {
      bad = true;
    } else if (!pruned && remap != nullptr) {
      row = remap[id];
      pruned = row == -1;
      if (row < -1 || row >= table_rows)
        fail(errc::invalid_option, "remap[" + str(id) + "] = " + str(row) + " (for indices[" + str(j) +
                                       "]) is out of range [-1, " + str(table_rows) + ")");
    }
    if (bad) {
      if (opts.bad_indices == bad_index_policy::error)
        fail(errc::index_out_of_range, "indices[" + str(j) + "] = " + str(id) + " is out of range [0, " + str(limit) +
                                           (remap != nullptr ? ") of remap" : ")"));
      if (found.skipped++ == 0) {
        found.first_position = j;
        found.first_value = id;
      }
    }
    found.pruned += pruned;
    rows[j] = bad || pruned ? padding : row;
  }
}

// f(indices typed) for an int32 or int64 array.
template <class F>
void with_typed(const index_span& s, F&& f) {
  if (s.type == index_type::i32) f(static_cast<const std::int32_t*>(s.data));
  else f(static_cast<const std::int64_t*>(s.data));
}

// The indices of a call with index policies: the caller's when nothing needs skipping or
// remapping (no remap, and every index a row), else rewritten.
void apply_index_policies(const index_span& ix, const options& opts, std::int64_t table_rows, std::int64_t padding,
                          std::vector<std::int64_t>& rewritten, index_census& census, bag_source& s) {
  const bool remapping = opts.remap.data != nullptr || opts.remap.size != 0;
  const index_extremes e = scan_indices(ix.data, ix.type, ix.size);
  if (!remapping && (ix.size == 0 || (e.lowest >= 0 && e.highest < table_rows))) return;
  resized(rewritten, static_cast<std::size_t>(ix.size), "the rewritten indices of index policies over " + str(ix.size) + " indices");
  with_typed(ix, [&](const auto* indices) {
    if (!remapping) {
      rewrite_indices(indices, ix.size, static_cast<const std::int64_t*>(nullptr), 0, table_rows, opts, padding,
                      rewritten.data(), census.found);
      return;
    }
    with_typed(opts.remap, [&](const auto* remap) {
      rewrite_indices(indices, ix.size, remap, opts.remap.size, table_rows, opts, padding, rewritten.data(),
                      census.found);
    });
  });
  s.indices = rewritten.data();
  s.index_kind = index_type::i64;
}

}  // namespace

bag_source validate_bags(const bags& batch, const options& opts, std::int64_t table_rows, std::int64_t padding,
                         std::vector<std::int64_t>& rewritten, index_census& census) {
  const index_span& ix = batch.indices;
  validate_array("indices", ix.data, ix.size, element_bytes("indices", ix.type));
  bag_source s;
  s.indices = ix.data;
  s.index_kind = ix.type;
  s.nnz = ix.size;
  s.layout = batch.layout;
  s.boundaries = batch.boundaries.data;
  s.boundary_kind = batch.boundaries.type;
  s.num_boundaries = batch.boundaries.size;

  if (opts.include_last_offset && batch.layout != bag_layout::offsets)
    fail(errc::invalid_option, "include_last_offset applies only to bags given by offsets");
  switch (batch.layout) {
    case bag_layout::offsets:
      validate_array("offsets", batch.boundaries.data, batch.boundaries.size,
                     element_bytes("offsets", batch.boundaries.type));
      s.one_index_each = check_offsets(batch.boundaries, s.nnz, opts.include_last_offset);
      s.num_bags = opts.include_last_offset ? s.num_boundaries - 1 : s.num_boundaries;
      break;
    case bag_layout::lengths:
      validate_array("lengths", batch.boundaries.data, batch.boundaries.size,
                     element_bytes("lengths", batch.boundaries.type));
      s.one_index_each = check_lengths(batch.boundaries, s.nnz);
      s.num_bags = s.num_boundaries;
      break;
    case bag_layout::fixed_length:
      if (batch.fixed_length <= 0)
        fail(errc::bad_lengths, "fixed_length = " + str(batch.fixed_length) + " must be > 0");
      if (s.nnz % batch.fixed_length != 0)
        fail(errc::bad_lengths, "len(indices) = " + str(s.nnz) + " is not a multiple of fixed_length = " +
                                    str(batch.fixed_length));
      s.fixed_length = batch.fixed_length;
      s.one_index_each = batch.fixed_length == 1;
      s.num_boundaries = 0;
      s.num_bags = s.nnz / batch.fixed_length;
      break;
    default: fail(errc::invalid_option, "bags.layout = " + str(std::int64_t(batch.layout)) + " is not a layout");
  }

  const auto& w = batch.per_sample_weights;
  if (!w.empty()) {
    const std::int64_t weights_size = span_size("per_sample_weights", w.size());
    validate_array("per_sample_weights", w.data(), weights_size, 4);
    if (!takes_weights(reduction_of(opts.mode)))
      fail(errc::invalid_option, "per_sample_weights cannot be used with mode " + std::string(to_string(opts.mode)));
    if (weights_size != s.nnz)
      fail(errc::size_mismatch, "per_sample_weights has " + str(weights_size) +
                                    " entries but indices has " + str(s.nnz));
    s.weights = w.data();
  }

  census = {{}, opts.report};
  if (!has_index_policies(opts)) validate_indices("indices", ix, table_rows);
  else apply_index_policies(ix, opts, table_rows, padding, rewritten, census, s);
  return s;
}

void validate_indices(const char* name, const index_span& indices, std::int64_t table_rows) {
  validate_array(name, indices.data, indices.size, element_bytes(name, indices.type));
  if (indices.type == index_type::i32)
    check_indices_typed(name, static_cast<const std::int32_t*>(indices.data), indices.size, table_rows);
  else
    check_indices_typed(name, static_cast<const std::int64_t*>(indices.data), indices.size, table_rows);
}

namespace {
template <class Matrix>
std::int64_t validate_matrix_for(const char* name, const Matrix& m, std::int64_t rows_needed, std::int64_t dim,
                                 std::int64_t element_bytes = 4) {
  const std::int64_t stride = validate_matrix(name, m.data, m.rows, m.cols, m.row_stride, element_bytes);
  if (m.cols != dim)
    fail(errc::size_mismatch, std::string(name) + " has " + str(m.cols) + " columns but dim is " + str(dim));
  if (m.rows < rows_needed)
    fail(errc::size_mismatch, std::string(name) + " has " + str(m.rows) + " rows but the call needs " + str(rows_needed));
  return stride;
}
}  // namespace

std::int64_t validate_output(const char* name, const matrix_view<float>& out, std::int64_t rows_needed,
                             std::int64_t dim) {
  return validate_matrix_for(name, out, rows_needed, dim);
}

std::int64_t output_element_bytes(dtype type) noexcept {
  return type == dtype::f32 ? 4 : type == dtype::f16 || type == dtype::bf16 ? 2 : 0;
}

std::int64_t validate_output(const char* name, const output_view& out, std::int64_t rows_needed, std::int64_t dim) {
  const std::int64_t bytes = output_element_bytes(out.type);
  if (bytes == 0)
    fail(errc::invalid_option, std::string(name) + ".type = " + std::string(to_string(out.type)) + " (" +
                                   str(std::int64_t(out.type)) + ") is no output type: f32, f16 or bf16");
  return validate_matrix_for(name, out, rows_needed, dim, bytes);
}

std::int64_t validate_input(const char* name, const matrix_view<const float>& in, std::int64_t rows_needed,
                            std::int64_t dim) {
  return validate_matrix_for(name, in, rows_needed, dim);
}

void validate_argmax_size(std::span<const std::int64_t> argmax, const options& opts, std::int64_t rows,
                          std::int64_t dim) {
  if (argmax.empty()) return;
  const std::int64_t size = span_size("argmax", argmax.size());
  if (argmax.data() == nullptr) fail(errc::null_pointer, "argmax is null but has size " + str(size));
  check_aligned("argmax", argmax.data(), sizeof(std::int64_t));
  if (opts.mode != mode::max) fail(errc::invalid_option, "argmax is only defined for mode max");
  std::int64_t needed = 0;
  if (__builtin_mul_overflow(rows, dim, &needed) || size != needed)
    fail(errc::size_mismatch, "argmax has " + str(size) + " entries but the call needs " +
                                  str(rows) + " x " + str(dim));
}

void validate_argmax_values(std::span<const std::int64_t> argmax, const bag_source& bags,
                            std::int64_t padding_idx, std::int64_t dim) {
  const auto index = [&](std::int64_t j) { return element_at(bags.indices, bags.index_kind, j); };
  std::int64_t begin = 0;
  for (std::int64_t b = 0; b < bags.num_bags; ++b) {
    const std::int64_t end = end_of_bag(bags, b, begin);
    bool has_rows = false;
    for (std::int64_t j = begin; j < end && !has_rows; ++j) has_rows = index(j) != padding_idx;
    for (std::int64_t d = 0; d < dim; ++d) {
      const std::int64_t winner = argmax[b * dim + d];
      bool found = winner == -1 && !has_rows;
      for (std::int64_t j = begin; j < end && !found; ++j) found = winner != padding_idx && index(j) == winner;
      if (!found)
        fail(errc::invalid_option,
             "argmax[" + str(b) + "][" + str(d) + "] = " + str(winner) +
                 (has_rows ? " is not a non-padding index of bag " + str(b)
                           : " must be -1: bag " + str(b) + " has no non-padding index"));
    }
    begin = end;
  }
}

byte_range matrix_bytes(const char* name, const void* data, std::int64_t rows, std::int64_t cols,
                        std::int64_t row_stride, std::int64_t element_bytes) {
  const std::int64_t elements = rows == 0 ? 0 : (rows - 1) * row_stride + cols;
  return {name, data, elements * element_bytes};
}

bool overlap(const byte_range& a, const byte_range& b) noexcept {
  if (a.bytes == 0 || b.bytes == 0 || a.begin == nullptr || b.begin == nullptr) return false;
  const auto a0 = reinterpret_cast<std::uintptr_t>(a.begin), b0 = reinterpret_cast<std::uintptr_t>(b.begin);
  return a0 < b0 + static_cast<std::uintptr_t>(b.bytes) && b0 < a0 + static_cast<std::uintptr_t>(a.bytes);
}

void validate_disjoint(std::span<const byte_range> outputs, std::span<const byte_range> inputs) {
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    for (const byte_range& in : inputs)
      if (overlap(outputs[i], in))
        fail(errc::aliasing, std::string(outputs[i].name) + " overlaps " + in.name);
    for (std::size_t k = i + 1; k < outputs.size(); ++k)
      if (overlap(outputs[i], outputs[k]))
        fail(errc::aliasing, std::string(outputs[i].name) + " overlaps " + outputs[k].name);
  }
}

// With one element type and row stride, b's columns start m elements into a's rows (mod the
// stride), so the windows [0, a.cols) and [m, m + b.cols) never meet when a.cols <= m and
// m + b.cols <= stride. Other layouts are judged by their bytes.
namespace {

// Where b's columns start in a's rows: its distance from a in elements, mod a's stride (both
// aligned to their elements, validated, so the distance is whole elements).
std::int64_t column_offset(const output_cells& a, const output_cells& b) noexcept {
  const auto unit = static_cast<std::uintptr_t>(a.element_bytes);
  const auto distance = static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(b.data) / unit -
                                                  reinterpret_cast<std::uintptr_t>(a.data) / unit);
  return ((distance % a.stride) + a.stride) % a.stride;
}

}  // namespace

bool share_a_cell(const output_cells& a, const output_cells& b) noexcept {
  if (!overlap(a.bytes("a"), b.bytes("b"))) return false;
  if (a.stride != b.stride || a.element_bytes != b.element_bytes) return true;
  const std::int64_t m = column_offset(a, b);
  return !(a.cols <= m && m + b.cols <= a.stride);
}

namespace {

std::uintptr_t begin_of(const table_range& r) noexcept { return reinterpret_cast<std::uintptr_t>(r.bytes.begin); }
std::uintptr_t end_of(const table_range& r) noexcept { return begin_of(r) + static_cast<std::uintptr_t>(r.bytes.bytes); }

// Drops the empty ranges (nothing read or written there) and sorts the rest by address.
void sort_nonempty(std::vector<table_range>& ranges) {
  std::erase_if(ranges, [](const table_range& r) { return r.bytes.bytes == 0 || r.bytes.begin == nullptr; });
  std::sort(ranges.begin(), ranges.end(), [](const table_range& a, const table_range& b) {
    return begin_of(a) != begin_of(b) ? begin_of(a) < begin_of(b) : a.table < b.table;
  });
}

// Keeps in `furthest` the range reaching furthest of those seen.
void reach(const table_range*& furthest, const table_range& r) noexcept {
  if (furthest == nullptr || end_of(r) > end_of(*furthest)) furthest = &r;
}

std::string named(const table_range& r) { return "tables[" + str(std::int64_t(r.table)) + "]'s " + r.bytes.name; }

[[noreturn]] void fail_overlap(const table_range& written, const table_range& other) {
  fail(errc::aliasing, named(written) + " overlaps " + named(other));
}

// Two written ranges, the lower table named first.
[[noreturn]] void fail_writes_meet(const table_range& a, const table_range& b, const char* how) {
  const bool a_first = a.table < b.table;
  fail(errc::aliasing, named(a_first ? a : b) + how + named(a_first ? b : a));
}

// Every pair of written matrices of one cluster (ranges chained by overlapping bytes), judged cell
// by cell.
void validate_matrices_pairwise(std::span<const table_range> cluster) {
  for (std::size_t i = 0; i < cluster.size(); ++i)
    for (std::size_t j = i + 1; j < cluster.size(); ++j)
      if (cluster[i].cells && cluster[j].cells && share_a_cell(*cluster[i].cells, *cluster[j].cells))
        fail_writes_meet(cluster[i], cluster[j], " shares cells with ");
}

// The written matrices of one cluster. When all have one row stride and element size (a
// KeyedTensor's tables), each one's columns are a window [m, m + cols) of the stride (m: its
// offset from the first one's, mod the stride): windows sorted by m that do not meet their
// neighbours (and the last, wrapping, not the first) meet nowhere, so n log n decides it. Otherwise,
// or should two neighbours' windows meet, every pair is judged (exact, and rare).
void validate_cluster_matrices(std::span<table_range> cluster) {
  const auto matrices_end = std::partition(cluster.begin(), cluster.end(), [](const table_range& r) { return r.cells.has_value(); });
  const std::span<table_range> matrices(cluster.begin(), matrices_end);
  if (matrices.size() < 2) return;
  const output_cells& first = *matrices[0].cells;
  for (const table_range& r : matrices)
    if (r.cells->stride != first.stride || r.cells->element_bytes != first.element_bytes)
      return validate_matrices_pairwise(matrices);
  const auto window_start = [&](const table_range& r) { return column_offset(first, *r.cells); };
  std::sort(matrices.begin(), matrices.end(),
            [&](const table_range& a, const table_range& b) { return window_start(a) < window_start(b); });
  for (std::size_t i = 0; i < matrices.size(); ++i) {
    const table_range& a = matrices[i];
    const table_range& b = matrices[(i + 1) % matrices.size()];
    const std::int64_t b_start = window_start(b) + (i + 1 == matrices.size() ? first.stride : 0);
    if (window_start(a) + a.cells->cols > b_start) return validate_matrices_pairwise(matrices);
  }
}

// Written ranges against each other: no two may share a byte, except two matrices that share no
// cell. One sweep in address order finds a byte-judged range overlapping any earlier one (the
// furthest-reaching earlier write, or earlier byte-judged write); the matrices are judged per
// cluster of overlapping ranges.
void validate_writes_disjoint(std::vector<table_range>& writes) {
  const table_range* furthest = nullptr;
  const table_range* furthest_bytes = nullptr;
  std::size_t cluster = 0;
  for (std::size_t i = 0; i < writes.size(); ++i) {
    const table_range& b = writes[i];
    if (furthest != nullptr && begin_of(b) >= end_of(*furthest)) {  // nothing before reaches b
      validate_cluster_matrices(std::span(writes).subspan(cluster, i - cluster));
      cluster = i;
      furthest = furthest_bytes = nullptr;
    }
    const table_range* earlier = b.cells ? furthest_bytes : furthest;
    if (earlier != nullptr && end_of(*earlier) > begin_of(b)) fail_writes_meet(*earlier, b, " overlaps ");
    reach(furthest, b);
    if (!b.cells) reach(furthest_bytes, b);
  }
  validate_cluster_matrices(std::span(writes).subspan(cluster));
}

}  // namespace

void validate_tables_disjoint(std::vector<table_range>& reads, std::vector<table_range>& writes) {
  sort_nonempty(reads);
  sort_nonempty(writes);
  // One sweep over both in address order: two ranges overlap exactly when the later-starting one
  // begins before the other ends, so each range is checked against the furthest-reaching range
  // of the other kind begun before it.
  const table_range* furthest_read = nullptr;
  const table_range* furthest_write = nullptr;
  std::size_t r = 0, w = 0;
  while (r < reads.size() || w < writes.size()) {
    if (w == writes.size() || (r < reads.size() && begin_of(reads[r]) < begin_of(writes[w]))) {
      const table_range& read = reads[r++];
      if (furthest_write != nullptr && end_of(*furthest_write) > begin_of(read)) fail_overlap(*furthest_write, read);
      reach(furthest_read, read);
    } else {
      const table_range& write = writes[w++];
      if (furthest_read != nullptr && end_of(*furthest_read) > begin_of(write)) fail_overlap(write, *furthest_read);
      reach(furthest_write, write);
    }
  }
  validate_writes_disjoint(writes);
}

std::int64_t validate_compressed(const char* name, const compressed_table_view& t) {
  const std::string n(name);
  if (format_of(t.element_type) == nullptr)
    fail(errc::invalid_option, n + ".element_type = " + str(std::int64_t(t.element_type)) + " is not a dtype");
  if (t.rows < 0) fail(errc::invalid_shape, n + " has " + str(t.rows) + " rows (must be >= 0)");
  const std::int64_t bytes = row_bytes(t.element_type, t.dim);
  const std::int64_t stride = t.row_stride == 0 ? bytes : t.row_stride;
  if (stride < bytes)
    fail(errc::invalid_shape, n + " has row_stride " + str(t.row_stride) + " bytes, less than the " + str(bytes) +
                                  " bytes of a " + std::string(to_string(t.element_type)) + " row of dim " + str(t.dim));
  if (!span_bytes(t.rows, stride, bytes, 1))
    fail(errc::size_overflow, n + " of " + str(t.rows) + " rows x " + str(stride) + " bytes overflows the address space");
  if (t.data == nullptr && t.rows > 0) fail(errc::null_pointer, n + " is null but has " + str(t.rows) + " rows");
  return stride;
}

}  // namespace embag::detail
