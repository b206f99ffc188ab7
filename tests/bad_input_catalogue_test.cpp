// The bad-input catalogue: one row per distinct check that validation makes, across every entry
// point, plus hostile sizes (counts near the limits of int64 and size_t over tiny buffers, 10^8
// indices) and misaligned pointers. Each row spells out one malformed call over a fixture of valid
// buffers; the test checks that the call throws embag::error with the row's code, that the message
// names the culprit (argument, and position and value where there is one), and that no buffer of
// the fixture changed a byte: outputs start as canaries, and the table and inputs are watched too.
//
// A row's bad values live in the row's own lambda (local arrays and views), never in the fixture,
// so the fixture's snapshot before the call must equal its snapshot after it.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "embag/batched.hpp"
#include "embag/embag.hpp"
#include "embag/roofline.hpp"
#include "call.hpp"  // the C ABI's sparse backward, into the caller's buffers
#include "support/cases.hpp"

namespace embag {
namespace {

constexpr std::int64_t R = 10;   // table rows
constexpr std::int64_t D = 4;    // dim
constexpr std::int64_t B = 3;    // bags of the fixture's batch: {1, 2} {3, 4} {5, 6}
constexpr std::int64_t NNZ = 6;  // its indices
constexpr std::int64_t i64_max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t i64_min = std::numeric_limits<std::int64_t>::min();
constexpr std::int32_t i32_min = std::numeric_limits<std::int32_t>::min();
constexpr std::int64_t two_to_61 = std::int64_t{1} << 61;
constexpr std::int64_t two_to_62 = std::int64_t{1} << 62;
constexpr std::int64_t argmax_canary = 0x5A5A5A5A5A5A5A5A;
constexpr float nan = std::numeric_limits<float>::quiet_NaN();
constexpr float inf = std::numeric_limits<float>::infinity();

using i64s = std::vector<std::int64_t>;
using i32s = std::vector<std::int32_t>;

// The buffers of a valid call of every entry point. Rows take views of them and break one thing.
struct fixture {
  // R rows and B slack rows after them, so an output overlapping the last row stays in bounds.
  std::vector<float> table_store = [] {
    std::vector<float> v((R + B) * D);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.25f * static_cast<float>(i % 11) - 1.0f;
    return v;
  }();
  i64s idx64{1, 2, 3, 4, 5, 6};
  i64s off64{0, 2, 4, 6};  // B offsets, or all four with include_last_offset
  std::vector<float> weights{0.5f, 1.5f, -1.0f, 2.0f, 0.25f, 1.0f};
  std::vector<float> out_store = test::canary_buffer(NNZ, D);  // room for mode none's NNZ rows
  i64s argmax_store = i64s(B * D, argmax_canary);              // what forward writes
  i64s argmax_valid{1, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5};       // what backward reads: each bag's first
  std::vector<float> grad_output_store = test::canary_buffer(R, D);  // R rows, so grad_table can alias it
  std::vector<float> grad_table_store = test::canary_buffer(R, D);
  std::vector<float> grad_weights_store = test::canary_buffer(1, NNZ);
  sparse_gradient sparse{{7, 8, 9}, test::canary_buffer(B, D), -7};
  // The C ABI's sparse gradient buffers: room for a row per index.
  i64s sparse_rows_out = i64s(NNZ, argmax_canary);
  std::vector<float> sparse_values_out = test::canary_buffer(NNZ, D);
  // Raw memory for misaligned and aliased views: values j % R, valid as indices and offsets (and as
  // denormal floats); cache-line aligned, so an offset of 1..3 bytes misaligns every element type.
  alignas(64) std::array<std::int32_t, 256> pool = [] {
    std::array<std::int32_t, 256> a{};
    for (std::size_t j = 0; j < a.size(); ++j) a[j] = static_cast<std::int32_t>(j % R);
    return a;
  }();

  table_view<const float> table() const { return {table_store.data(), R, D, 0}; }
  table_view<float> mutable_table() { return {table_store.data(), R, D, 0}; }
  std::span<const std::int64_t> offsets() const { return std::span(off64).first(B); }
  bags batch() const { return bags::from_offsets(idx64, offsets()); }
  bags weighted_batch() const { return bags::from_offsets(idx64, offsets(), weights); }
  matrix_view<float> out() { return {out_store.data(), B, D, 0}; }
  std::span<std::int64_t> argmax_out() { return argmax_store; }
  std::span<const std::int64_t> argmax_in() const { return argmax_valid; }
  matrix_view<const float> grad_output(std::int64_t rows = B) const { return {grad_output_store.data(), rows, D, 0}; }
  matrix_view<float> grad_table() { return {grad_table_store.data(), R, D, 0}; }
  std::span<float> grad_weights() { return grad_weights_store; }
  detail::sparse_gradient_buffers sparse_out() { return {sparse_rows_out, sparse_values_out.data()}; }

  // A pointer `bytes` past the pool's start: misaligned for T unless bytes is a multiple of its size.
  template <class T>
  T* pool_at(std::size_t bytes) {
    return reinterpret_cast<T*>(reinterpret_cast<std::byte*>(pool.data()) + bytes);
  }

  fixture() = default;
  fixture(const fixture&) = delete;
  fixture& operator=(const fixture&) = delete;
};

options with_mode(mode m) {
  options o;
  o.mode = m;
  return o;
}

// ---------------------------------------------------------------------------------------------
// Snapshots: every byte of the fixture.

struct region {
  const char* name;
  std::vector<std::byte> bytes;
};

template <class T>
region bytes_of(const char* name, const T* data, std::size_t count) {
  const auto* p = reinterpret_cast<const std::byte*>(data);
  return {name, std::vector<std::byte>(p, p + count * sizeof(T))};
}
template <class T>
region bytes_of(const char* name, const std::vector<T>& v) {
  return bytes_of(name, v.data(), v.size());
}

std::vector<region> snapshot(const fixture& f) {
  return {bytes_of("table", f.table_store),
          bytes_of("out", f.out_store),
          bytes_of("argmax (forward's)", f.argmax_store),
          bytes_of("argmax (backward's)", f.argmax_valid),
          bytes_of("grad_output", f.grad_output_store),
          bytes_of("grad_table", f.grad_table_store),
          bytes_of("grad_weights", f.grad_weights_store),
          bytes_of("sparse.rows", f.sparse.rows),
          bytes_of("sparse.values", f.sparse.values),
          bytes_of("sparse.dim", &f.sparse.dim, 1),
          bytes_of("sparse_rows_out", f.sparse_rows_out),
          bytes_of("sparse_values_out", f.sparse_values_out),
          bytes_of("indices", f.idx64),
          bytes_of("offsets", f.off64),
          bytes_of("per_sample_weights", f.weights),
          bytes_of("pool", f.pool.data(), f.pool.size())};
}

::testing::AssertionResult unchanged(const std::vector<region>& before, const std::vector<region>& after) {
  for (std::size_t i = 0; i < before.size(); ++i) {
    const std::vector<std::byte>& a = before[i].bytes;
    const std::vector<std::byte>& b = after[i].bytes;
    if (a.size() != b.size())
      return ::testing::AssertionFailure() << before[i].name << " changed size from " << a.size() << " to "
                                           << b.size() << " bytes";
    if (std::memcmp(a.data(), b.data(), a.size()) != 0) {
      const auto first = std::mismatch(a.begin(), a.end(), b.begin()).first - a.begin();
      return ::testing::AssertionFailure() << before[i].name << " was written: first changed byte " << first;
    }
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------------
// Hostile sizes that need real memory: 10^8 int32 indices into a 10-row table, all valid but one
// near the end. Allocated on first use (400 MB) and kept for the rest of the process.

constexpr std::int64_t many = 100'000'000;
constexpr std::int64_t many_culprit = many - 3;

const i32s& many_indices() {
  static const i32s indices = [] {
    i32s v(static_cast<std::size_t>(many));
    for (std::size_t j = 0; j < v.size(); ++j) v[j] = static_cast<std::int32_t>(j % R);
    v[static_cast<std::size_t>(many_culprit)] = static_cast<std::int32_t>(R);
    return v;
  }();
  return indices;
}

// ---------------------------------------------------------------------------------------------
// The catalogue.

struct catalogue_case {
  std::string name;  // [A-Za-z0-9_], unique: entry point first
  std::function<void(fixture&)> call;
  errc code;
  std::string fragment;  // what the message must contain
  std::string skip = {};  // non-empty: why this machine cannot run the row
};

// gtest prints a failing parameter with this rather than as raw bytes.
void PrintTo(const catalogue_case& c, std::ostream* os) { *os << c.name; }

std::optional<isa> missing_isa() {
  const std::vector<isa> have = available_isas();
  for (isa which : {isa::neon, isa::avx512, isa::avx2, isa::sse2})
    if (std::find(have.begin(), have.end(), which) == have.end()) return which;
  return std::nullopt;
}

std::string str(std::int64_t v) { return std::to_string(v); }

// Every row; with `batched`, the rows' forward calls go through forward_batched instead, as the one
// table of a batch (the options' execution the batch's), which must refuse them alike.
std::vector<catalogue_case> catalogue(bool batched = false) {
  using F = fixture;
  const auto fwd = [batched](F& f, const bags& batch, const options& opts = {}) {
    if (!batched) return forward(f.table(), batch, opts, f.out());
    const table_view<const float> t = f.table();
    options one = opts;
    one.execution = {};
    const table_lookup table{{reinterpret_cast<const std::byte*>(t.data), t.rows, t.dim, t.row_stride * 4, dtype::f32},
                             batch, one, f.out()};
    forward_batched({&table, 1}, opts.execution);
  };
  const auto dense = [](F& f, const bags& batch, const options& opts = {}) {
    backward_dense(batch, opts, f.grad_output(), f.grad_table());
  };
  const auto sparse = [](F& f, const bags& batch, const options& opts = {}) {
    backward_sparse(R, batch, opts, f.grad_output(), f.sparse);
  };
  // the C ABI's form; its row count is the row's own
  const auto sparse_into = [](F& f, const detail::sparse_gradient_buffers& out,
                              matrix_view<const float> grad_output) {
    std::int64_t num_rows = -1;
    detail::backward_sparse_into(R, f.batch(), {}, grad_output, {}, out, num_rows);
  };
  const auto wgrad = [](F& f, const bags& batch, const options& opts = {}) {
    per_sample_weights_grad(f.table(), batch, opts, f.grad_output(), f.grad_weights());
  };

  std::vector<catalogue_case> rows = {
      // Indices, int32 and int64, and their type tag.
      {"forward_index_past_the_table_i32",
       [=](F& f) { fwd(f, bags::from_offsets(i32s{1, 2, 3, 4, 10, 6}, f.offsets())); },
       errc::index_out_of_range, "indices[4] = 10 is out of range [0, 10)"},
      {"forward_negative_index_i64", [=](F& f) { fwd(f, bags::from_offsets(i64s{1, 2, -1, 4, 5, 6}, f.offsets())); },
       errc::index_out_of_range, "indices[2] = -1 is out of range [0, 10)"},
      {"backward_dense_index_int64_max",
       [=](F& f) { dense(f, bags::from_offsets(i64s{1, 2, 3, 4, 5, i64_max}, f.offsets())); },
       errc::index_out_of_range, "indices[5] = 9223372036854775807 is out of range [0, 10)"},
      {"backward_sparse_index_int32_min",
       [=](F& f) { sparse(f, bags::from_offsets(i32s{i32_min, 2, 3, 4, 5, 6}, f.offsets())); },
       errc::index_out_of_range, "indices[0] = -2147483648 is out of range [0, 10)"},
      {"weights_grad_index_past_the_table",
       [=](F& f) { wgrad(f, bags::from_offsets(i64s{1, 2, 3, 4, 5, 11}, f.offsets(), f.weights)); },
       errc::index_out_of_range, "indices[5] = 11 is out of range [0, 10)"},
      {"renorm_rows_row_past_the_table", [](F& f) { renorm_rows(f.mutable_table(), i64s{0, 10}, 1.0f); },
       errc::index_out_of_range, "rows[1] = 10 is out of range [0, 10)"},
      {"gather_roofline_negative_index_i32",
       [](F& f) { gather_roofline(f.table(), bags::from_offsets(i32s{0, -5}, i32s{0, 1}), {f.out_store.data(), 2, D}); },
       errc::index_out_of_range, "indices[1] = -5 is out of range [0, 10)"},
      {"gather_roofline_lengths",
       [](F& f) { gather_roofline(f.table(), bags::from_lengths(f.idx64, i64s{2, 2, 2}), f.out()); },
       errc::invalid_option, "gather_roofline takes bags given by offsets of the indices' own type"},
      {"gather_roofline_offsets_of_another_type",
       [](F& f) { gather_roofline(f.table(), bags::from_offsets(f.idx64, i32s{0, 2, 4}), f.out()); },
       errc::invalid_option, "gather_roofline takes bags given by offsets of the indices' own type"},
      {"gather_roofline_weighted",
       [](F& f) { gather_roofline(f.table(), f.weighted_batch(), f.out()); },
       errc::invalid_option, "gather_roofline sums rows unweighted: it takes no per_sample_weights"},
      {"gather_roofline_out_too_short",
       [](F& f) { gather_roofline(f.table(), f.batch(), {f.out_store.data(), B - 1, D}); },
       errc::size_mismatch, "out has 2 rows but the call needs 3"},
      {"gather_roofline_out_over_the_indices",
       [](F& f) { gather_roofline(f.table(), f.batch(), {reinterpret_cast<float*>(f.idx64.data()), B, D}); },
       errc::aliasing, "out overlaps indices"},
      {"forward_index_type_not_a_type",
       [=](F& f) {
         fwd(f, bags::from_offsets(index_span(f.idx64.data(), NNZ, static_cast<index_type>(5)), f.offsets()));
       },
       errc::invalid_option, "indices.type = 5 is not int32 or int64"},
      {"forward_offsets_type_not_a_type",
       [=](F& f) {
         fwd(f, bags::from_offsets(f.idx64, index_span(f.off64.data(), B, static_cast<index_type>(3))));
       },
       errc::invalid_option, "offsets.type = 3 is not int32 or int64"},

      // Offsets.
      {"forward_offsets_not_starting_at_0_i32", [=](F& f) { fwd(f, bags::from_offsets(f.idx64, i32s{1, 2, 4})); },
       errc::bad_offsets, "offsets[0] = 1 must be 0"},
      {"backward_dense_offsets_decreasing", [=](F& f) { dense(f, bags::from_offsets(f.idx64, i64s{0, 4, 1})); },
       errc::bad_offsets, "offsets[2] = 1 is less than offsets[1] = 4"},
      {"forward_offsets_past_the_end", [=](F& f) { fwd(f, bags::from_offsets(f.idx64, i64s{0, 2, 7})); },
       errc::bad_offsets, "offsets[2] = 7 is past the end of indices (6 entries)"},
      {"forward_last_offset_not_len_indices",
       [=](F& f) {
         options o;
         o.include_last_offset = true;
         fwd(f, bags::from_offsets(f.idx64, i64s{0, 2, 4, 5}), o);
       },
       errc::bad_offsets, "offsets[3] = 5 must equal len(indices) = 6 with include_last_offset"},
      {"forward_include_last_offset_with_empty_offsets",
       [=](F& f) {
         options o;
         o.include_last_offset = true;
         fwd(f, bags::from_offsets(f.idx64, i64s{}), o);
       },
       errc::bad_offsets, "offsets is empty but include_last_offset needs at least one entry"},
      {"backward_sparse_empty_offsets_with_indices", [=](F& f) { sparse(f, bags::from_offsets(f.idx64, i64s{})); },
       errc::bad_offsets, "offsets is empty but indices has 6 entries"},
      {"forward_include_last_offset_with_lengths",
       [=](F& f) {
         options o;
         o.include_last_offset = true;
         fwd(f, bags::from_lengths(f.idx64, i64s{2, 2, 2}), o);
       },
       errc::invalid_option, "include_last_offset applies only to bags given by offsets"},

      // Lengths and fixed-length bags.
      {"forward_negative_length_i32", [=](F& f) { fwd(f, bags::from_lengths(f.idx64, i32s{2, -1, 5})); },
       errc::bad_lengths, "lengths[1] = -1 is negative"},
      {"weights_grad_lengths_summing_past_the_end",
       [=](F& f) { wgrad(f, bags::from_lengths(f.idx64, i64s{2, 2, 3}, f.weights)); }, errc::bad_lengths,
       "lengths[0..2] sum past len(indices) = 6 at lengths[2] = 3"},
      {"backward_dense_lengths_summing_short", [=](F& f) { dense(f, bags::from_lengths(f.idx64, i64s{2, 2, 1})); },
       errc::bad_lengths, "lengths sum to 5 but indices has 6 entries"},
      {"forward_fixed_length_0", [=](F& f) { fwd(f, bags::fixed(f.idx64, 0)); }, errc::bad_lengths,
       "fixed_length = 0 must be > 0"},
      {"forward_fixed_length_not_dividing_indices", [=](F& f) { fwd(f, bags::fixed(f.idx64, 4)); },
       errc::bad_lengths, "len(indices) = 6 is not a multiple of fixed_length = 4"},
      {"forward_layout_not_a_layout",
       [=](F& f) {
         bags batch = f.batch();
         batch.layout = static_cast<bag_layout>(7);
         fwd(f, batch);
       },
       errc::invalid_option, "bags.layout = 7 is not a layout"},

      // Per-sample weights and their gradient.
      {"forward_weights_one_short",
       [=](F& f) { fwd(f, bags::from_offsets(f.idx64, f.offsets(), std::span(f.weights).first(5))); },
       errc::size_mismatch, "per_sample_weights has 5 entries but indices has 6"},
      {"forward_weights_with_mode_max",
       [](F& f) { forward(f.table(), f.weighted_batch(), with_mode(mode::max), f.out(), f.argmax_out()); },
       errc::invalid_option, "per_sample_weights cannot be used with mode max"},
      {"backward_dense_weights_with_mode_none",
       [](F& f) { backward_dense(f.weighted_batch(), with_mode(mode::none), f.grad_output(NNZ), f.grad_table()); },
       errc::invalid_option, "per_sample_weights cannot be used with mode none"},
      {"weights_grad_without_weights", [=](F& f) { wgrad(f, f.batch()); }, errc::invalid_option,
       "per_sample_weights_grad needs per_sample_weights"},
      {"weights_grad_mode_max_on_empty_bags",
       [](F& f) {
         per_sample_weights_grad(f.table(), bags::from_offsets(i64s{}, i64s{0}), with_mode(mode::max),
                                 f.grad_output(1), std::span<float>{});
       },
       errc::invalid_option, "per_sample_weights_grad is defined for mode sum, mean and sqrtn only"},
      {"weights_grad_grad_weights_one_short",
       [](F& f) {
         per_sample_weights_grad(f.table(), f.weighted_batch(), {}, f.grad_output(), f.grad_weights().first(5));
       },
       errc::size_mismatch, "grad_weights has 5 entries but indices has 6"},

      // Outputs and gradients of the wrong shape.
      {"forward_out_one_row_short", [](F& f) { forward(f.table(), f.batch(), {}, {f.out_store.data(), B - 1, D}); },
       errc::size_mismatch, "out has 2 rows but the call needs 3"},
      {"forward_out_wrong_cols", [](F& f) { forward(f.table(), f.batch(), {}, {f.out_store.data(), B, D + 1}); },
       errc::size_mismatch, "out has 5 columns but dim is 4"},
      {"forward_out_stride_below_dim",
       [](F& f) { forward(f.table(), f.batch(), {}, {f.out_store.data(), B, D, D - 1}); }, errc::invalid_shape,
       "out has row_stride 3 smaller than its dim 4"},
      {"forward_mode_none_out_sized_per_bag",
       [](F& f) { forward(f.table(), f.batch(), with_mode(mode::none), f.out()); }, errc::size_mismatch,
       "out has 3 rows but the call needs 6"},
      {"backward_dense_grad_output_one_row_short",
       [](F& f) { backward_dense(f.batch(), {}, f.grad_output(B - 1), f.grad_table()); }, errc::size_mismatch,
       "grad_output has 2 rows but the call needs 3"},
      {"backward_dense_grad_output_wrong_cols",
       [](F& f) { backward_dense(f.batch(), {}, {f.grad_output_store.data(), B, D + 1}, f.grad_table()); },
       errc::size_mismatch, "grad_output has 5 columns but dim is 4"},
      {"backward_dense_grad_table_stride_below_dim",
       [](F& f) { backward_dense(f.batch(), {}, f.grad_output(), {f.grad_table_store.data(), R, D, 2}); },
       errc::invalid_shape, "grad_table has row_stride 2 smaller than its dim 4"},
      {"backward_sparse_negative_table_rows",
       [](F& f) { backward_sparse(-1, f.batch(), {}, f.grad_output(), f.sparse); }, errc::invalid_shape,
       "table_rows = -1 must be >= 0"},

      // Null pointers with a non-zero size.
      {"forward_table_null",
       [](F& f) { forward(table_view<const float>{nullptr, R, D, 0}, f.batch(), {}, f.out()); },
       errc::null_pointer, "table is null but has 10 rows"},
      {"forward_indices_null",
       [=](F& f) { fwd(f, bags::from_offsets(index_span(nullptr, NNZ, index_type::i64), f.offsets())); },
       errc::null_pointer, "indices is null but has size 6"},
      {"backward_dense_offsets_null",
       [=](F& f) { dense(f, bags::from_offsets(f.idx64, index_span(nullptr, B, index_type::i32))); },
       errc::null_pointer, "offsets is null but has size 3"},
      {"backward_sparse_lengths_null",
       [=](F& f) { sparse(f, bags::from_lengths(f.idx64, index_span(nullptr, B, index_type::i64))); },
       errc::null_pointer, "lengths is null but has size 3"},
      {"forward_weights_null",
       [=](F& f) {
         const std::span<const float> weights(static_cast<const float*>(nullptr), NNZ);
         fwd(f, bags::from_offsets(f.idx64, f.offsets(), weights));
       },
       errc::null_pointer, "per_sample_weights is null but has size 6"},
      {"forward_out_null", [](F& f) { forward(f.table(), f.batch(), {}, {nullptr, B, D}); }, errc::null_pointer,
       "out is null but has 3 rows"},
      {"forward_argmax_null",
       [](F& f) {
         forward(f.table(), f.batch(), with_mode(mode::max), f.out(),
                 std::span<std::int64_t>(static_cast<std::int64_t*>(nullptr), B * D));
       },
       errc::null_pointer, "argmax is null but has size 12"},
      {"weights_grad_grad_output_null",
       [](F& f) { per_sample_weights_grad(f.table(), f.weighted_batch(), {}, {nullptr, B, D}, f.grad_weights()); },
       errc::null_pointer, "grad_output is null but has 3 rows"},
      {"weights_grad_grad_weights_null",
       [](F& f) {
         per_sample_weights_grad(f.table(), f.weighted_batch(), {}, f.grad_output(),
                                 std::span<float>(static_cast<float*>(nullptr), NNZ));
       },
       errc::null_pointer, "grad_weights is null but has size 6"},
      {"renorm_rows_rows_null",
       [](F& f) { renorm_rows(f.mutable_table(), index_span(nullptr, 2, index_type::i64), 1.0f); },
       errc::null_pointer, "rows is null but has size 2"},

      // Invalid shapes.
      {"forward_table_dim_0",
       [](F& f) { forward(table_view<const float>{f.table_store.data(), R, 0, 0}, f.batch(), {}, f.out()); },
       errc::invalid_shape, "table has dim 0 (must be > 0)"},
      {"weights_grad_table_negative_rows",
       [](F& f) {
         per_sample_weights_grad(table_view<const float>{f.table_store.data(), -5, D, 0}, f.weighted_batch(), {},
                                 f.grad_output(), f.grad_weights());
       },
       errc::invalid_shape, "table has -5 rows (must be >= 0)"},
      {"renorm_rows_table_stride_below_dim",
       [](F& f) { renorm_rows(table_view<float>{f.table_store.data(), R, D, 2}, i64s{0}, 1.0f); },
       errc::invalid_shape, "table has row_stride 2 smaller than its dim 4"},
      {"gather_roofline_table_negative_dim",
       [](F& f) { gather_roofline(table_view<const float>{f.table_store.data(), R, -3, 0}, f.batch(), f.out()); },
       errc::invalid_shape, "table has dim -3 (must be > 0)"},
      {"forward_indices_negative_size",
       [=](F& f) { fwd(f, bags::from_offsets(index_span(f.idx64.data(), -1, index_type::i64), f.offsets())); },
       errc::invalid_shape, "indices has negative size -1"},

      // Options.
      {"forward_padding_idx_past_the_table",
       [=](F& f) {
         options o;
         o.padding_idx = R;
         fwd(f, f.batch(), o);
       },
       errc::invalid_option, "padding_idx = 10 is out of range [-10, 10)"},
      {"backward_sparse_padding_idx_int64_min",
       [=](F& f) {
         options o;
         o.padding_idx = i64_min;
         sparse(f, f.batch(), o);
       },
       errc::invalid_option, "padding_idx = -9223372036854775808 is out of range [-10, 10)"},
      {"forward_max_norm_0",
       [=](F& f) {
         options o;
         o.max_norm = 0.0f;
         fwd(f, f.batch(), o);
       },
       errc::invalid_option, "max_norm = 0.000000 must be > 0"},
      {"forward_max_norm_nan",
       [=](F& f) {
         options o;
         o.max_norm = nan;
         fwd(f, f.batch(), o);
       },
       errc::invalid_option, "max_norm = nan must be > 0"},
      {"weights_grad_max_norm_minus_infinity",
       [=](F& f) {
         options o;
         o.max_norm = -inf;
         wgrad(f, f.weighted_batch(), o);
       },
       errc::invalid_option, "max_norm = -inf must be > 0"},
      {"forward_norm_type_0",
       [=](F& f) {
         options o;
         o.max_norm = 1.0f;
         o.norm_type = 0.0f;
         fwd(f, f.batch(), o);
       },
       errc::invalid_option, "norm_type = 0.000000 must be > 0"},
      {"backward_dense_norm_type_nan",
       [=](F& f) {
         options o;
         o.max_norm = 1.0f;
         o.norm_type = nan;
         dense(f, f.batch(), o);
       },
       errc::invalid_option, "norm_type = nan must be > 0"},
      // Index policies (bad_indices, pruned_ids, remap) and their report.
      {"forward_skip_without_a_report",
       [=](F& f) {
         options o;
         o.bad_indices = bad_index_policy::skip;
         fwd(f, bags::from_offsets(i64s{1, 2, 3, 4, 50, 6}, f.offsets()), o);
       },
       errc::invalid_option, "bad_indices = skip needs opts.report"},
      {"forward_bad_indices_not_a_policy",
       [=](F& f) {
         options o;
         o.bad_indices = static_cast<bad_index_policy>(7);
         fwd(f, f.batch(), o);
       },
       errc::invalid_option, "bad_indices = 7 is not a bad_index_policy"},
      {"backward_dense_pruned_ids_then_minus_2",
       [=](F& f) {
         options o;
         o.pruned_ids = true;
         dense(f, bags::from_offsets(i64s{1, -1, -2, 4, 5, 6}, f.offsets()), o);
       },
       errc::index_out_of_range, "indices[2] = -2 is out of range [0, 10)"},
      {"backward_sparse_remap_value_past_the_table",
       [=](F& f) {
         options o;
         const i64s remap{0, 1, 2, 10, 4, 5, 6};
         o.remap = remap;
         sparse(f, bags::from_offsets(i64s{1, 2, 3, 4, 5, 6}, f.offsets()), o);
       },
       errc::invalid_option, "remap[3] = 10 (for indices[2]) is out of range [-1, 10)"},
      {"weights_grad_id_past_the_remap",
       [=](F& f) {
         options o;
         const i32s remap{0, 1, 2, 3, 4};
         o.remap = remap;
         wgrad(f, bags::from_offsets(i64s{1, 2, 3, 4, 5, 6}, f.offsets(), f.weights), o);
       },
       errc::index_out_of_range, "indices[4] = 5 is out of range [0, 5) of remap"},
      {"forward_remap_null_with_a_size",
       [=](F& f) {
         options o;
         o.remap = index_span(nullptr, 3, index_type::i64);
         fwd(f, f.batch(), o);
       },
       errc::null_pointer, "remap is null but has size 3"},
      {"forward_remap_misaligned",
       [=](F& f) {
         options o;
         o.remap = index_span(f.pool_at<std::int64_t>(4), 8, index_type::i64);
         fwd(f, f.batch(), o);
       },
       errc::misaligned, "remap is misaligned by 4 bytes"},
      {"forward_report_misaligned",
       [=](F& f) {
         options o;
         o.report = f.pool_at<index_report>(4);
         fwd(f, f.batch(), o);
       },
       errc::misaligned, "report is misaligned by 4 bytes"},
      {"backward_dense_report_over_grad_table",
       [=](F& f) {
         options o;
         o.report = reinterpret_cast<index_report*>(f.grad_table_store.data());
         dense(f, f.batch(), o);
       },
       errc::aliasing, "grad_table overlaps report"},
      {"renorm_rows_max_norm_0", [](F& f) { renorm_rows(f.mutable_table(), i64s{0, 5}, 0.0f); },
       errc::invalid_option, "max_norm = 0.000000 must be > 0"},
      {"renorm_rows_norm_type_negative", [](F& f) { renorm_rows(f.mutable_table(), i64s{0, 5}, 1.0f, -2.0f); },
       errc::invalid_option, "norm_type = -2.000000 must be > 0"},
      {"forward_mode_not_a_mode", [=](F& f) { fwd(f, f.batch(), with_mode(static_cast<mode>(9))); },
       errc::invalid_option, "mode = 9 is not a mode"},
      {"forward_max_norm_mode_not_a_flavour",
       [=](F& f) {
         options o;
         o.max_norm = 1.0f;
         o.max_norm_mode = static_cast<max_norm_flavour>(9);
         fwd(f, f.batch(), o);
       },
       errc::invalid_option, "max_norm_mode = 9 is not a flavour"},
      {"forward_prefetch_level_not_a_level",
       [=](F& f) {
         options o;
         o.execution.prefetch.level = static_cast<prefetch_level>(9);
         fwd(f, f.batch(), o);
       },
       errc::invalid_option, "execution.prefetch.level = 9 is not a prefetch level"},
      {"gather_roofline_negative_prefetch_rows",
       [](F& f) {
         execution how;
         how.prefetch.rows = -4;
         gather_roofline(f.table(), f.batch(), f.out(), how);
       },
       errc::invalid_option, "execution.prefetch.rows = -4 must be >= 0"},
      {"backward_dense_negative_max_threads",
       [=](F& f) {
         options o;
         o.execution.max_threads = -1;
         dense(f, f.batch(), o);
       },
       errc::invalid_option, "execution.max_threads = -1 must be >= 0"},
      {"forward_in_place_max_norm_on_a_const_table",
       [=](F& f) {
         options o;
         o.max_norm = 1.0f;
         o.max_norm_mode = max_norm_flavour::in_place;
         fwd(f, f.batch(), o);
       },
       errc::invalid_option, "max_norm_mode in_place needs a mutable table"},

      // argmax of mode max.
      {"forward_argmax_with_mode_sum", [](F& f) { forward(f.table(), f.batch(), {}, f.out(), f.argmax_out()); },
       errc::invalid_option, "argmax is only defined for mode max"},
      {"backward_dense_argmax_with_mode_mean",
       [](F& f) { backward_dense(f.batch(), with_mode(mode::mean), f.grad_output(), f.grad_table(), f.argmax_in()); },
       errc::invalid_option, "argmax is only defined for mode max"},
      {"forward_argmax_one_short",
       [](F& f) { forward(f.table(), f.batch(), with_mode(mode::max), f.out(), f.argmax_out().first(B * D - 1)); },
       errc::size_mismatch, "argmax has 11 entries but the call needs 3 x 4"},
      {"backward_sparse_mode_max_without_argmax",
       [](F& f) { backward_sparse(R, f.batch(), with_mode(mode::max), f.grad_output(), f.sparse); },
       errc::size_mismatch, "mode max needs the argmax that forward produced"},
      {"backward_dense_argmax_from_another_bag",
       [](F& f) {
         i64s argmax = f.argmax_valid;
         argmax[1 * D + 2] = 1;
         backward_dense(f.batch(), with_mode(mode::max), f.grad_output(), f.grad_table(), argmax);
       },
       errc::invalid_option, "argmax[1][2] = 1 is not a non-padding index of bag 1"},
      {"backward_dense_argmax_not_minus_1_for_an_empty_bag",
       [](F& f) {
         const i64s argmax = {1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3};  // bag 1 is empty: its entries must be -1
         backward_dense(bags::from_offsets(f.idx64, i64s{0, 2, 2}), with_mode(mode::max), f.grad_output(),
                        f.grad_table(), argmax);
       },
       errc::invalid_option, "argmax[1][0] = 3 must be -1: bag 1 has no non-padding index"},

      // Aliasing: an output overlapping an input or another output.
      {"forward_out_overlapping_the_tables_last_row",
       [](F& f) { forward(f.table(), f.batch(), {}, {f.table_store.data() + (R - 1) * D, B, D}); },
       errc::aliasing, "out overlaps table"},
      {"forward_out_overlapping_indices",
       [](F& f) { forward(f.table(), f.batch(), {}, {reinterpret_cast<float*>(f.idx64.data()), B, D}); },
       errc::aliasing, "out overlaps indices"},
      {"forward_out_overlapping_offsets",
       [](F& f) {
         forward(f.table(), bags::from_offsets(f.idx64, index_span(f.pool.data(), B, index_type::i32)), {},
                 {f.pool_at<float>(0), B, D});
       },
       errc::aliasing, "out overlaps offsets/lengths"},
      {"forward_out_overlapping_weights",
       [](F& f) {
         const std::span<const float> weights(f.pool_at<const float>(8), NNZ);
         forward(f.table(), bags::from_offsets(f.idx64, f.offsets(), weights), {}, {f.pool_at<float>(0), B, D});
       },
       errc::aliasing, "out overlaps per_sample_weights"},
      {"forward_out_overlapping_argmax",
       [](F& f) {
         forward(f.table(), f.batch(), with_mode(mode::max), {reinterpret_cast<float*>(f.argmax_store.data()), B, D},
                 f.argmax_out());
       },
       errc::aliasing, "out overlaps argmax"},
      {"backward_dense_grad_table_is_grad_output",
       [](F& f) { backward_dense(f.batch(), {}, f.grad_output(), {f.grad_output_store.data(), R, D}); },
       errc::aliasing, "grad_table overlaps grad_output"},
      {"backward_sparse_grad_output_inside_grad_values",
       [](F& f) { backward_sparse(R, f.batch(), {}, {f.sparse.values.data(), B, D}, f.sparse); }, errc::aliasing,
       "grad.values overlaps grad_output"},
      {"backward_sparse_indices_inside_grad_rows",
       [](F& f) {
         backward_sparse(R, bags::from_offsets(index_span(f.sparse.rows.data(), B, index_type::i64), i64s{0}), {},
                         f.grad_output(1), f.sparse);
       },
       errc::aliasing, "grad.rows overlaps indices"},
      {"backward_sparse_into_values_overlapping_rows",
       [=](F& f) {
         const std::span<std::int64_t> rows_out(f.pool_at<std::int64_t>(0), NNZ);
         sparse_into(f, {rows_out, f.pool_at<float>(8 * (NNZ - 1))}, f.grad_output());  // on the last row
       },
       errc::aliasing, "rows_out overlaps values_out"},
      {"backward_sparse_into_rows_inside_grad_output",
       [=](F& f) {
         sparse_into(f, {std::span(reinterpret_cast<std::int64_t*>(f.grad_output_store.data()), NNZ),
                         f.sparse_values_out.data()}, f.grad_output());
       },
       errc::aliasing, "rows_out overlaps grad_output"},
      {"backward_sparse_into_values_are_grad_output",
       [=](F& f) { sparse_into(f, {f.sparse_rows_out, f.grad_output_store.data()}, f.grad_output()); },
       errc::aliasing, "values_out overlaps grad_output"},
      {"backward_sparse_into_values_inside_indices",
       [](F& f) {
         const bags in_pool = bags::from_offsets(index_span(f.pool.data(), NNZ, index_type::i32), f.offsets());
         std::int64_t num_rows = -1;
         detail::backward_sparse_into(R, in_pool, {}, f.grad_output(), {}, {f.sparse_rows_out, f.pool_at<float>(4)},
                                      num_rows);
       },
       errc::aliasing, "values_out overlaps indices"},
      {"backward_sparse_into_num_rows_inside_rows",
       [](F& f) {
         detail::backward_sparse_into(R, f.batch(), {}, f.grad_output(), {}, f.sparse_out(), f.sparse_rows_out[1]);
       },
       errc::aliasing, "num_rows overlaps rows_out"},
      {"weights_grad_grad_weights_are_the_weights",
       [](F& f) { per_sample_weights_grad(f.table(), f.weighted_batch(), {}, f.grad_output(), f.weights); },
       errc::aliasing, "grad_weights overlaps per_sample_weights"},
      {"forward_in_place_max_norm_table_holding_indices",
       [](F& f) {
         options o;
         o.max_norm = 1.0f;
         o.max_norm_mode = max_norm_flavour::in_place;
         forward(table_view<float>{f.pool_at<float>(0), R, D, 0},
                 bags::from_offsets(index_span(f.pool.data(), NNZ, index_type::i32), f.offsets()), o, f.out());
       },
       errc::aliasing, "table overlaps indices"},

      // Misaligned pointers: reading through them is undefined behaviour.
      {"forward_table_misaligned",
       [](F& f) { forward(table_view<const float>{f.pool_at<const float>(1), R, D, 0}, f.batch(), {}, f.out()); },
       errc::misaligned, "table is misaligned by 1 byte for its 4-byte elements"},
      {"forward_indices_i64_misaligned_by_4",
       [=](F& f) {
         fwd(f, bags::from_offsets(index_span(f.pool_at<const std::int64_t>(4), NNZ, index_type::i64), f.offsets()));
       },
       errc::misaligned, "indices is misaligned by 4 bytes for its 8-byte elements"},
      {"backward_dense_indices_i32_misaligned",
       [=](F& f) {
         dense(f, bags::from_offsets(index_span(f.pool_at<const std::int32_t>(2), NNZ, index_type::i32), f.offsets()));
       },
       errc::misaligned, "indices is misaligned by 2 bytes for its 4-byte elements"},
      {"forward_offsets_misaligned",
       [=](F& f) {
         fwd(f, bags::from_offsets(f.idx64, index_span(f.pool_at<const std::int64_t>(1), B, index_type::i64)));
       },
       errc::misaligned, "offsets is misaligned by 1 byte for its 8-byte elements"},
      {"backward_sparse_lengths_misaligned",
       [=](F& f) {
         sparse(f, bags::from_lengths(f.idx64, index_span(f.pool_at<const std::int32_t>(3), B, index_type::i32)));
       },
       errc::misaligned, "lengths is misaligned by 3 bytes for its 4-byte elements"},
      {"weights_grad_weights_misaligned",
       [=](F& f) {
         wgrad(f, bags::from_offsets(f.idx64, f.offsets(), std::span<const float>(f.pool_at<const float>(1), NNZ)));
       },
       errc::misaligned, "per_sample_weights is misaligned by 1 byte for its 4-byte elements"},
      {"forward_out_misaligned", [](F& f) { forward(f.table(), f.batch(), {}, {f.pool_at<float>(1), B, D}); },
       errc::misaligned, "out is misaligned by 1 byte for its 4-byte elements"},
      {"forward_argmax_misaligned",
       [](F& f) {
         forward(f.table(), f.batch(), with_mode(mode::max), f.out(),
                 std::span<std::int64_t>(f.pool_at<std::int64_t>(4), B * D));
       },
       errc::misaligned, "argmax is misaligned by 4 bytes for its 8-byte elements"},
      {"backward_dense_grad_output_misaligned",
       [](F& f) { backward_dense(f.batch(), {}, {f.pool_at<const float>(2), B, D}, f.grad_table()); },
       errc::misaligned, "grad_output is misaligned by 2 bytes for its 4-byte elements"},
      {"backward_dense_grad_table_misaligned",
       [](F& f) { backward_dense(f.batch(), {}, f.grad_output(), {f.pool_at<float>(1), R, D}); }, errc::misaligned,
       "grad_table is misaligned by 1 byte for its 4-byte elements"},
      {"backward_sparse_argmax_misaligned",
       [](F& f) {
         backward_sparse(R, f.batch(), with_mode(mode::max), f.grad_output(), f.sparse,
                         std::span<const std::int64_t>(f.pool_at<const std::int64_t>(1), B * D));
       },
       errc::misaligned, "argmax is misaligned by 1 byte for its 8-byte elements"},
      {"backward_sparse_into_rows_misaligned",
       [=](F& f) {
         sparse_into(f, {std::span(f.pool_at<std::int64_t>(4), NNZ), f.sparse_values_out.data()}, f.grad_output());
       },
       errc::misaligned, "rows_out is misaligned by 4 bytes for its 8-byte elements"},
      {"backward_sparse_into_values_misaligned",
       [=](F& f) { sparse_into(f, {f.sparse_rows_out, f.pool_at<float>(2)}, f.grad_output()); }, errc::misaligned,
       "values_out is misaligned by 2 bytes for its 4-byte elements"},
      {"weights_grad_grad_weights_misaligned",
       [](F& f) {
         per_sample_weights_grad(f.table(), f.weighted_batch(), {}, f.grad_output(),
                                 std::span<float>(f.pool_at<float>(1), NNZ));
       },
       errc::misaligned, "grad_weights is misaligned by 1 byte for its 4-byte elements"},
      {"renorm_rows_rows_misaligned",
       [](F& f) {
         renorm_rows(f.mutable_table(), index_span(f.pool_at<const std::int64_t>(4), 2, index_type::i64), 1.0f);
       },
       errc::misaligned, "rows is misaligned by 4 bytes for its 8-byte elements"},
      {"gather_roofline_table_misaligned",
       [](F& f) { gather_roofline(table_view<const float>{f.pool_at<const float>(3), R, D, 0}, f.batch(), f.out()); },
       errc::misaligned, "table is misaligned by 3 bytes for its 4-byte elements"},

      // Hostile sizes: counts near the limits of int64 and size_t over tiny real buffers.
      {"forward_table_rows_int64_max",
       [](F& f) { forward(table_view<const float>{f.table_store.data(), i64_max, D, 0}, f.batch(), {}, f.out()); },
       errc::size_overflow, "table of 9223372036854775807 rows x stride 4 floats overflows the address space"},
      {"forward_table_dim_2_to_62",
       [](F& f) { forward(table_view<const float>{f.table_store.data(), 1, two_to_62, 0}, f.batch(), {}, f.out()); },
       errc::size_overflow, "table of 1 rows x stride 4611686018427387904 floats overflows the address space"},
      {"weights_grad_table_rows_times_stride_overflowing",
       [](F& f) {
         per_sample_weights_grad(table_view<const float>{f.table_store.data(), R, D, two_to_61}, f.weighted_batch(),
                                 {}, f.grad_output(), f.grad_weights());
       },
       errc::size_overflow, "table of 10 rows x stride 2305843009213693952 floats overflows the address space"},
      {"renorm_rows_table_dim_int64_max",
       [](F& f) { renorm_rows(table_view<float>{f.table_store.data(), 1, i64_max, 0}, i64s{0}, 1.0f); },
       errc::size_overflow, "table of 1 rows x stride 9223372036854775807 floats overflows the address space"},
      {"forward_empty_table_with_dim_2_to_62",  // zero bytes, so a valid shape: the indices are what is wrong
       [](F& f) { forward(table_view<const float>{f.table_store.data(), 0, two_to_62, 0}, f.batch(), {}, f.out()); },
       errc::index_out_of_range, "indices[0] = 1 is out of range [0, 0)"},
      {"forward_out_rows_int64_max",
       [](F& f) { forward(f.table(), f.batch(), {}, {f.out_store.data(), i64_max, D}); }, errc::size_overflow,
       "out of 9223372036854775807 rows x stride 4 floats overflows the address space"},
      {"forward_out_stride_int64_max",
       [](F& f) { forward(f.table(), f.batch(), {}, {f.out_store.data(), B, D, i64_max}); }, errc::size_overflow,
       "out of 3 rows x stride 9223372036854775807 floats overflows the address space"},
      {"backward_dense_grad_table_rows_and_dim_int64_max",
       [](F& f) { backward_dense(f.batch(), {}, f.grad_output(), {f.grad_table_store.data(), i64_max, i64_max}); },
       errc::size_overflow, "grad_table of 9223372036854775807 rows x stride 9223372036854775807 floats overflows"},
      {"backward_sparse_table_rows_int64_min",
       [](F& f) { backward_sparse(i64_min, f.batch(), {}, f.grad_output(), f.sparse); }, errc::invalid_shape,
       "table_rows = -9223372036854775808 must be >= 0"},
      {"forward_indices_size_int64_max",
       [=](F& f) { fwd(f, bags::from_offsets(index_span(f.idx64.data(), i64_max, index_type::i64), f.offsets())); },
       errc::size_overflow, "indices of 9223372036854775807 elements overflows the address space"},
      {"backward_sparse_offsets_size_int64_min",
       [=](F& f) { sparse(f, bags::from_offsets(f.idx64, index_span(f.off64.data(), i64_min, index_type::i64))); },
       errc::invalid_shape, "offsets has negative size -9223372036854775808"},
      {"forward_weights_size_2_to_62",
       [=](F& f) {
         const std::span<const float> weights(f.weights.data(), static_cast<std::size_t>(two_to_62));
         fwd(f, bags::from_offsets(f.idx64, f.offsets(), weights));
       },
       errc::size_overflow, "per_sample_weights of 4611686018427387904 elements overflows the address space"},
      {"forward_weights_size_size_max",
       [=](F& f) {
         const std::span<const float> weights(f.weights.data(), std::numeric_limits<std::size_t>::max());
         fwd(f, bags::from_offsets(f.idx64, f.offsets(), weights));
       },
       errc::size_overflow, "per_sample_weights of 18446744073709551615 elements overflows the address space"},
      {"forward_argmax_size_size_max",
       [](F& f) {
         const std::span<std::int64_t> argmax(f.argmax_store.data(), std::numeric_limits<std::size_t>::max());
         forward(f.table(), f.batch(), with_mode(mode::max), f.out(), argmax);
       },
       errc::size_overflow, "argmax of 18446744073709551615 elements overflows the address space"},
      {"forward_fixed_length_int64_max", [=](F& f) { fwd(f, bags::fixed(f.idx64, i64_max)); }, errc::bad_lengths,
       "len(indices) = 6 is not a multiple of fixed_length = 9223372036854775807"},
      {"forward_fixed_length_int64_min", [=](F& f) { fwd(f, bags::fixed(f.idx64, i64_min)); }, errc::bad_lengths,
       "fixed_length = -9223372036854775808 must be > 0"},
      {"table_rows_int64_max", [](F&) { table too_big(i64_max, 1); }, errc::size_overflow,
       "table(9223372036854775807, 1) overflows the address space"},
      {"forward_no_bags_out_wrong_cols",
       [](F& f) {
         forward(f.table(), bags::from_offsets(i64s{}, i64s{}), {}, {f.out_store.data(), 0, D - 1});
       },
       errc::size_mismatch, "out has 3 columns but dim is 4"},
      {"forward_no_bags_out_rows_int64_min",
       [](F& f) { forward(f.table(), bags::from_offsets(i64s{}, i64s{}), {}, {f.out_store.data(), i64_min, D}); },
       errc::invalid_shape, "out has -9223372036854775808 rows (must be >= 0)"},
      {"backward_dense_no_bags_argmax_not_empty",
       [](F& f) {
         backward_dense(bags::from_offsets(i64s{}, i64s{}), with_mode(mode::max), f.grad_output(0), f.grad_table(),
                        f.argmax_in().first(D));
       },
       errc::size_mismatch, "argmax has 4 entries but the call needs 0 x 4"},
      {"backward_sparse_no_bags_dim_0",
       [](F& f) { backward_sparse(R, bags::from_offsets(i64s{}, i64s{}), {}, {nullptr, 0, 0}, f.sparse); },
       errc::invalid_shape, "grad_output has dim 0 (must be > 0)"},
      {"forward_1e8_indices_i32_one_out_of_range_near_the_end",
       [](F& f) {
         forward(f.table(), bags::fixed(many_indices(), many), {}, {f.out_store.data(), 1, D});
       },
       errc::index_out_of_range, "indices[" + str(many_culprit) + "] = 10 is out of range [0, 10)"},
      {"gather_roofline_on_the_reference",
       [](F& f) {
         execution how;
         how.isa = isa::reference;
         gather_roofline(f.table(), f.batch(), f.out(), how);
       },
       errc::unsupported_isa, "gather_roofline measures the memory system: it needs a SIMD ISA, not reference"},
  };

  // Instruction sets this CPU or build lacks (on x86-64 that is always neon).
  if (const std::optional<isa> missing = missing_isa()) {
    const std::string name(to_string(*missing));
    rows.push_back({"forward_isa_this_machine_lacks",
                    [=](F& f) {
                      options o;
                      o.execution.isa = *missing;
                      fwd(f, f.batch(), o);
                    },
                    errc::unsupported_isa, "options.execution.isa asks for ISA " + name});
    rows.push_back({"force_isa_this_machine_lacks", [=](F&) { force_isa(*missing); }, errc::unsupported_isa,
                    "force_isa asks for ISA " + name});
  } else {
    for (const char* name : {"forward_isa_this_machine_lacks", "force_isa_this_machine_lacks"})
      rows.push_back({name, {}, errc::unsupported_isa, {}, "this machine has every instruction set"});
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------

// The fixture's own calls are valid and write the buffers the snapshot watches: without this, a
// row could pass because of some other fault, or a write could go unseen.
TEST(BadInputCatalogueFixture, ValidCallsSucceedAndWriteTheWatchedBuffers) {
  const auto expect_writes = [](const char* what, auto&& call) {
    SCOPED_TRACE(what);
    fixture f;
    const std::vector<region> before = snapshot(f);
    EXPECT_NO_THROW(call(f));
    EXPECT_FALSE(unchanged(before, snapshot(f)));
  };
  expect_writes("forward", [](fixture& f) { forward(f.table(), f.weighted_batch(), {}, f.out()); });
  expect_writes("forward max", [](fixture& f) {
    forward(f.table(), f.batch(), with_mode(mode::max), f.out(), f.argmax_out());
  });
  expect_writes("forward none", [](fixture& f) {
    forward(f.table(), f.batch(), with_mode(mode::none), {f.out_store.data(), NNZ, D});
  });
  expect_writes("backward_dense max", [](fixture& f) {
    backward_dense(f.batch(), with_mode(mode::max), f.grad_output(), f.grad_table(), f.argmax_in());
  });
  expect_writes("backward_sparse", [](fixture& f) { backward_sparse(R, f.batch(), {}, f.grad_output(), f.sparse); });
  expect_writes("backward_sparse_into", [](fixture& f) {
    std::int64_t num_rows = -1;
    detail::backward_sparse_into(R, f.batch(), {}, f.grad_output(), {}, f.sparse_out(), num_rows);
    EXPECT_EQ(num_rows, NNZ);
  });
  expect_writes("per_sample_weights_grad", [](fixture& f) {
    per_sample_weights_grad(f.table(), f.weighted_batch(), {}, f.grad_output(), f.grad_weights());
  });
  expect_writes("renorm_rows", [](fixture& f) { renorm_rows(f.mutable_table(), i64s{0, 5}, 0.01f); });
}

// Read-only inputs may share memory: indices that are also the offsets are no error.
TEST(BadInputCatalogueFixture, InputsMayAliasEachOther) {
  fixture f;
  const i64s shared = {0, 2, 4, 6, 1, 3};  // offsets are its first three, indices all six
  forward(f.table(), bags::from_offsets(shared, std::span(shared).first(B)), {}, f.out());
  EXPECT_NE(std::memcmp(f.out_store.data(), test::canary_buffer(NNZ, D).data(), B * D * sizeof(float)), 0);
}

class BadInputCatalogue : public ::testing::TestWithParam<catalogue_case> {};

TEST_P(BadInputCatalogue, ThrowsItsCodeNamesTheCulpritAndWritesNothing) {
  const catalogue_case& c = GetParam();
  if (!c.skip.empty()) GTEST_SKIP() << c.skip;
  fixture f;
  const std::vector<region> before = snapshot(f);
  try {
    c.call(f);
    ADD_FAILURE() << "the call was accepted; expected " << to_string(c.code) << ": " << c.fragment;
  } catch (const error& e) {
    EXPECT_EQ(to_string(e.code()), to_string(c.code)) << "message: " << e.what();
    EXPECT_NE(std::string_view(e.what()).find(c.fragment), std::string_view::npos)
        << "message \"" << e.what() << "\" lacks \"" << c.fragment << "\"";
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw " << typeid(e).name() << " instead of embag::error: " << e.what();
  }
  EXPECT_TRUE(unchanged(before, snapshot(f)));
}

INSTANTIATE_TEST_SUITE_P(Catalogue, BadInputCatalogue, ::testing::ValuesIn(catalogue()),
                         [](const ::testing::TestParamInfo<catalogue_case>& info) { return info.param.name; });

// The forward rows again, each call one table of a batched forward. A batch refuses max_norm in
// place whatever the table (other tables' lookups may read it), so that row names the batch's rule.
std::vector<catalogue_case> batched_forward_rows() {
  std::vector<catalogue_case> rows;
  for (catalogue_case& c : catalogue(true)) {
    if (c.name.rfind("forward_", 0) != 0) continue;
    if (c.name == "forward_in_place_max_norm_on_a_const_table") c.fragment = "tables[0]: max_norm in place in a batched call";
    rows.push_back(std::move(c));
  }
  return rows;
}
INSTANTIATE_TEST_SUITE_P(Batched, BadInputCatalogue, ::testing::ValuesIn(batched_forward_rows()),
                         [](const ::testing::TestParamInfo<catalogue_case>& info) { return info.param.name; });

TEST(BadInputCatalogueFixture, HasARowForEveryErrorCode) {
  std::vector<errc> seen;
  for (const catalogue_case& c : catalogue()) seen.push_back(c.code);
  for (int code = static_cast<int>(errc::index_out_of_range); code <= static_cast<int>(errc::misaligned); ++code)
    EXPECT_NE(std::find(seen.begin(), seen.end(), static_cast<errc>(code)), seen.end())
        << to_string(static_cast<errc>(code));
}

}  // namespace
}  // namespace embag
