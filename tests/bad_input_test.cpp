// Bad input: every malformed call throws embag::error with the right code and a message naming the
// argument, the position and the value, and writes nothing (DESIGN.md section 2): the outputs, the
// table and every other buffer of the call are byte for byte what they were before it.
//
// One table of cases. Each case mutates a valid "scene" (a small table, three bags, every output
// buffer filled with a canary) into one bad call of one entry point; a single helper snapshots
// every buffer, makes the call, checks code and message, and compares the snapshots. After each
// case a set of valid calls must still give the results they gave before any case ran.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
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

#include "embag/embag.hpp"
#include "support/cases.hpp"

namespace embag {
namespace {

constexpr std::int64_t R = 10;   // table rows
constexpr std::int64_t D = 4;    // dim
constexpr std::int64_t B = 3;    // bags: [1, 2] [3, 4] [5, 6]
constexpr std::int64_t NNZ = 6;  // indices
constexpr std::int64_t huge = std::int64_t{1} << 62;  // any byte count of this many elements overflows
constexpr std::int64_t argmax_canary = 0x5A5A5A5A5A5A5A5A;
const float nan = std::numeric_limits<float>::quiet_NaN();

enum class entry { forward, forward_const, backward_dense, backward_sparse, weights_grad, renorm };

const char* name_of(entry e) {
  switch (e) {
    case entry::forward: return "forward";
    case entry::forward_const: return "forward_const";
    case entry::backward_dense: return "backward_dense";
    case entry::backward_sparse: return "backward_sparse";
    case entry::weights_grad: return "weights_grad";
    case entry::renorm: return "renorm_rows";
  }
  return "?";
}

// A valid call of every entry point, with storage for all of its arrays. Cases break one thing.
// The stores are larger than the views where a bad call could otherwise make a buggy library
// write out of bounds (overlap cases), so a write shows up as a changed byte, not a crash.
struct scene {
  std::vector<float> table_store;  // (R + 4) x D: rows past R are slack
  std::vector<std::int64_t> idx64{1, 2, 3, 4, 5, 6};
  std::vector<std::int32_t> idx32{1, 2, 3, 4, 5, 6};
  std::vector<std::int64_t> bounds64{0, 2, 4, 6};  // B offsets, + 1 for include_last_offset
  std::vector<std::int32_t> bounds32{0, 2, 4, 6};
  std::vector<float> weights_store{0.5f, 1.5f, -1.0f, 2.0f, 0.25f, 1.0f, 9.0f, 9.0f};  // NNZ used
  std::vector<float> out_store = test::canary_buffer(NNZ + 2, D);
  std::vector<std::int64_t> argmax_store = std::vector<std::int64_t>(B * D, argmax_canary);  // forward's
  std::vector<std::int64_t> argmax_valid;  // what backward reads: the first index of each bag
  std::vector<float> grad_output_store = std::vector<float>(R * D);  // R rows so grad_table can alias it
  std::vector<float> grad_table_store = test::canary_buffer(R, D);
  std::vector<float> grad_weights_store = test::canary_buffer(1, NNZ + 2);
  std::vector<std::int64_t> renorm64{0, 5, 9, 5};
  std::vector<std::int32_t> renorm32{0, 5, 9, 5};
  sparse_gradient sparse;
  workspace ws;

  // The call, as the entry points see it.
  table_view<float> table;
  bags batch;
  options opts;
  matrix_view<float> out;
  std::span<std::int64_t> argmax_out;       // forward
  std::span<const std::int64_t> argmax_in;  // backward
  matrix_view<const float> grad_output;
  matrix_view<float> grad_table;
  std::span<float> grad_weights;
  index_span renorm_rows;
  float renorm_max_norm = 0.01f;  // small: every listed row would be rescaled if the call ran
  float renorm_norm_type = 2.0f;

  bool narrow_bounds = false;

  scene() {
    table_store = test::make_case(R, D, idx64, {0, 2, 4}).table;
    table_store.resize((R + 4) * D, 0.5f);
    for (std::size_t i = 0; i < grad_output_store.size(); ++i) grad_output_store[i] = 0.25f * float(i % 9) - 1.0f;
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t d = 0; d < D; ++d) argmax_valid.push_back(idx64[2 * b]);
    sparse.rows = {7, 8, 9};
    sparse.values = test::canary_buffer(3, D);
    sparse.dim = -7;

    table = {table_store.data(), R, D, 0};
    batch = bags::from_offsets(idx64, std::span<const std::int64_t>(bounds64).first(B), weights(NNZ));
    out = {out_store.data(), B, D, 0};
    grad_output = {grad_output_store.data(), B, D, 0};
    grad_table = {grad_table_store.data(), R, D, 0};
    grad_weights = std::span(grad_weights_store).first(NNZ);
    renorm_rows = renorm64;
  }
  scene(const scene&) = delete;
  scene& operator=(const scene&) = delete;

  std::span<const float> weights(std::int64_t n) const { return std::span(weights_store).first(std::size_t(n)); }

  // Integer widths of indices and bag boundaries (both stores always hold the same values).
  void widths(int bits) {
    batch.indices = bits == 32 ? index_span(idx32) : index_span(idx64);
    renorm_rows = bits == 32 ? index_span(renorm32) : index_span(renorm64);
    narrow_bounds = bits == 32;
    if (batch.layout != bag_layout::fixed_length) point_boundaries(batch.boundaries.size);
  }
  void index(std::size_t j, std::int64_t v) {
    idx64[j] = v;
    idx32[j] = static_cast<std::int32_t>(v);
  }
  void renorm_row(std::size_t j, std::int64_t v) {
    renorm64[j] = v;
    renorm32[j] = static_cast<std::int32_t>(v);
  }
  void boundaries(std::initializer_list<std::int64_t> v) {
    std::size_t i = 0;
    for (std::int64_t x : v) {
      bounds64[i] = x;
      bounds32[i++] = static_cast<std::int32_t>(x);
    }
    point_boundaries(static_cast<std::int64_t>(v.size()));
  }
  void point_boundaries(std::int64_t n) {
    batch.boundaries = narrow_bounds ? index_span(std::span<const std::int32_t>(bounds32).first(std::size_t(n)))
                                     : index_span(std::span<const std::int64_t>(bounds64).first(std::size_t(n)));
  }
  void offsets(std::initializer_list<std::int64_t> v) {
    batch.layout = bag_layout::offsets;
    boundaries(v);
  }
  void lengths(std::initializer_list<std::int64_t> v) {
    batch.layout = bag_layout::lengths;
    boundaries(v);
  }
  void fixed(std::int64_t length) {
    batch.layout = bag_layout::fixed_length;
    batch.fixed_length = length;
    batch.boundaries = {};
  }
  void max_mode() {
    opts.mode = mode::max;
    batch.per_sample_weights = {};
    argmax_out = argmax_store;
    argmax_in = argmax_valid;
  }
  void none_mode() {
    opts.mode = mode::none;
    batch.per_sample_weights = {};
    out.rows = NNZ;
    grad_output.rows = NNZ;
  }
};

void invoke(scene& s, entry e) {
  switch (e) {
    case entry::forward: return forward(s.table, s.batch, s.opts, s.out, s.argmax_out, &s.ws);
    case entry::forward_const:
      return forward(table_view<const float>(s.table), s.batch, s.opts, s.out, s.argmax_out);
    case entry::backward_dense:
      return backward_dense(s.batch, s.opts, s.grad_output, s.grad_table, s.argmax_in, &s.ws);
    case entry::backward_sparse:
      return backward_sparse(s.table.rows, s.batch, s.opts, s.grad_output, s.sparse, s.argmax_in, &s.ws);
    case entry::weights_grad:
      return per_sample_weights_grad(s.table, s.batch, s.opts, s.grad_output, s.grad_weights);
    case entry::renorm: return renorm_rows(s.table, s.renorm_rows, s.renorm_max_norm, s.renorm_norm_type);
  }
}

// ---------------------------------------------------------------------------------------------
// Snapshots: the bytes of every array of the scene, outputs and inputs alike.

struct region {
  std::string name;
  std::vector<std::byte> bytes;
};

template <class T>
void take(std::vector<region>& into, const char* name, const T* data, std::size_t count) {
  const auto* p = reinterpret_cast<const std::byte*>(data);
  into.push_back({name, std::vector<std::byte>(p, p + count * sizeof(T))});
}
template <class T>
void take(std::vector<region>& into, const char* name, const std::vector<T>& v) {
  take(into, name, v.data(), v.size());
}

std::vector<region> snapshot(const scene& s) {
  std::vector<region> r;
  take(r, "table", s.table_store);
  take(r, "out", s.out_store);
  take(r, "argmax (forward's)", s.argmax_store);
  take(r, "argmax (backward's)", s.argmax_valid);
  take(r, "grad_output", s.grad_output_store);
  take(r, "grad_table", s.grad_table_store);
  take(r, "grad_weights", s.grad_weights_store);
  take(r, "sparse_gradient.rows", s.sparse.rows);
  take(r, "sparse_gradient.values", s.sparse.values);
  take(r, "sparse_gradient.dim", &s.sparse.dim, 1);
  take(r, "indices (int64)", s.idx64);
  take(r, "indices (int32)", s.idx32);
  take(r, "offsets/lengths (int64)", s.bounds64);
  take(r, "offsets/lengths (int32)", s.bounds32);
  take(r, "per_sample_weights", s.weights_store);
  take(r, "renorm rows (int64)", s.renorm64);
  take(r, "renorm rows (int32)", s.renorm32);
  return r;
}

::testing::AssertionResult unchanged(const std::vector<region>& before, const std::vector<region>& after) {
  for (std::size_t i = 0; i < before.size(); ++i) {
    const auto& a = before[i].bytes;
    const auto& b = after[i].bytes;
    if (a.size() != b.size())
      return ::testing::AssertionFailure() << before[i].name << " changed size from " << a.size() << " to "
                                           << b.size() << " bytes";
    if (std::memcmp(a.data(), b.data(), a.size()) != 0) {
      std::size_t k = 0;
      while (a[k] == b[k]) ++k;
      return ::testing::AssertionFailure() << before[i].name << " was written: first changed byte " << k;
    }
  }
  return ::testing::AssertionSuccess();
}

// The one check of this file: the call throws embag::error with `code` and a message containing
// `fragment`, and no byte of the scene changed.
void expect_rejected(scene& s, entry where, errc code, const std::string& fragment) {
  const std::vector<region> before = snapshot(s);
  try {
    invoke(s, where);
    ADD_FAILURE() << name_of(where) << " accepted the call; expected " << to_string(code) << ": " << fragment;
  } catch (const error& e) {
    EXPECT_EQ(to_string(e.code()), to_string(code)) << "message: " << e.what();
    EXPECT_NE(std::string_view(e.what()).find(fragment), std::string_view::npos)
        << "message \"" << e.what() << "\" lacks \"" << fragment << "\"";
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw " << typeid(e).name() << " instead of embag::error: " << e.what();
  } catch (...) {
    ADD_FAILURE() << "threw something that is not a std::exception";
  }
  EXPECT_TRUE(unchanged(before, snapshot(s)));
}

// ---------------------------------------------------------------------------------------------
// Valid calls, run before any case and after each: the library keeps no state a failure breaks.

struct valid_results {
  std::vector<float> out, out_max, grad_table, grad_table_max, sparse_values, grad_weights, renormed;
  std::vector<std::int64_t> argmax, sparse_rows;
};

valid_results run_valid_calls() {
  valid_results r;
  const auto run = [](entry e, bool max, auto&& pick) {
    scene s;
    if (max) s.max_mode();
    invoke(s, e);
    pick(s);
  };
  run(entry::forward, false, [&](scene& s) { r.out = s.out_store; });
  run(entry::forward, true, [&](scene& s) { r.out_max = s.out_store; r.argmax = s.argmax_store; });
  run(entry::backward_dense, false, [&](scene& s) { r.grad_table = s.grad_table_store; });
  run(entry::backward_dense, true, [&](scene& s) { r.grad_table_max = s.grad_table_store; });
  run(entry::backward_sparse, false, [&](scene& s) {
    r.sparse_rows = s.sparse.rows;
    r.sparse_values = s.sparse.values;
  });
  run(entry::weights_grad, false, [&](scene& s) { r.grad_weights = s.grad_weights_store; });
  run(entry::renorm, false, [&](scene& s) { r.renormed = s.table_store; });
  return r;
}

template <class T>
::testing::AssertionResult same_bytes(const char* what, const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << " differs from the same valid call before the bad inputs";
}

void expect_same(const valid_results& x, const valid_results& y) {
  EXPECT_TRUE(same_bytes("forward sum", x.out, y.out));
  EXPECT_TRUE(same_bytes("forward max", x.out_max, y.out_max));
  EXPECT_TRUE(same_bytes("forward max argmax", x.argmax, y.argmax));
  EXPECT_TRUE(same_bytes("backward_dense sum", x.grad_table, y.grad_table));
  EXPECT_TRUE(same_bytes("backward_dense max", x.grad_table_max, y.grad_table_max));
  EXPECT_TRUE(same_bytes("backward_sparse rows", x.sparse_rows, y.sparse_rows));
  EXPECT_TRUE(same_bytes("backward_sparse values", x.sparse_values, y.sparse_values));
  EXPECT_TRUE(same_bytes("per_sample_weights_grad", x.grad_weights, y.grad_weights));
  EXPECT_TRUE(same_bytes("renorm_rows", x.renormed, y.renormed));
}

// ---------------------------------------------------------------------------------------------
// The cases.

struct bad_case {
  std::string name;  // [A-Za-z0-9_], unique
  entry where;
  std::function<void(scene&)> setup;
  errc code;
  std::string fragment;
  std::string skip;  // non-empty: GTEST_SKIP with this reason
};

std::optional<isa> missing_isa() {
  const std::vector<isa> have = available_isas();
  for (isa which : {isa::neon, isa::avx512, isa::avx2, isa::sse2})
    if (std::find(have.begin(), have.end(), which) == have.end()) return which;
  return std::nullopt;
}

std::vector<bad_case> all_cases() {
  using E = entry;
  std::vector<bad_case> cases;
  const auto add = [&](const std::string& name, std::vector<entry> where, std::function<void(scene&)> setup,
                       errc code, const std::string& fragment) {
    for (entry e : where) cases.push_back({name + "_" + name_of(e), e, setup, code, fragment, {}});
  };
  // Entry points that read bags and options; those that read a table_view.
  const std::vector<entry> bag_users = {E::forward, E::forward_const, E::backward_dense, E::backward_sparse,
                                        E::weights_grad};
  const std::vector<entry> table_users = {E::forward, E::forward_const, E::weights_grad, E::renorm};
  const std::vector<entry> forwards = {E::forward, E::forward_const};
  const std::vector<entry> backwards = {E::backward_dense, E::backward_sparse};
  const std::string H = std::to_string(huge);

  // Indices, offsets and lengths, in both integer widths.
  for (int bits : {32, 64}) {
    const std::string w = "_i" + std::to_string(bits);
    add("index_out_of_range" + w, bag_users, [=](scene& s) { s.widths(bits); s.index(3, 99); },
        errc::index_out_of_range, "indices[3] = 99 is out of range [0, 10)");
    add("index_equal_to_rows" + w, bag_users, [=](scene& s) { s.widths(bits); s.index(5, 10); },
        errc::index_out_of_range, "indices[5] = 10 is out of range [0, 10)");
    add("negative_index" + w, bag_users, [=](scene& s) { s.widths(bits); s.index(2, -1); },
        errc::index_out_of_range, "indices[2] = -1 is out of range [0, 10)");
    add("renorm_row_out_of_range" + w, {E::renorm}, [=](scene& s) { s.widths(bits); s.renorm_row(2, 10); },
        errc::index_out_of_range, "rows[2] = 10 is out of range [0, 10)");
    add("renorm_row_negative" + w, {E::renorm}, [=](scene& s) { s.widths(bits); s.renorm_row(1, -3); },
        errc::index_out_of_range, "rows[1] = -3 is out of range [0, 10)");
    add("offsets_not_starting_at_0" + w, bag_users, [=](scene& s) { s.widths(bits); s.offsets({1, 2, 4}); },
        errc::bad_offsets, "offsets[0] = 1 must be 0");
    add("offsets_decreasing" + w, bag_users, [=](scene& s) { s.widths(bits); s.offsets({0, 4, 2}); },
        errc::bad_offsets, "offsets[2] = 2 is less than offsets[1] = 4");
    add("offsets_past_the_end" + w, bag_users, [=](scene& s) { s.widths(bits); s.offsets({0, 2, 9}); },
        errc::bad_offsets, "offsets[2] = 9 is past the end of indices (6 entries)");
    add("offsets_empty_with_indices" + w, bag_users, [=](scene& s) { s.widths(bits); s.offsets({}); },
        errc::bad_offsets, "offsets is empty but indices has 6 entries");
    add("last_offset_not_len_indices" + w, bag_users,
        [=](scene& s) { s.widths(bits); s.opts.include_last_offset = true; s.offsets({0, 2, 4, 5}); },
        errc::bad_offsets, "offsets[3] = 5 must equal len(indices) = 6 with include_last_offset");
    add("lengths_sum_too_small" + w, bag_users, [=](scene& s) { s.widths(bits); s.lengths({2, 2, 1}); },
        errc::bad_lengths, "lengths sum to 5 but indices has 6 entries");
    add("lengths_too_few" + w, bag_users, [=](scene& s) { s.widths(bits); s.lengths({2, 2}); },
        errc::bad_lengths, "lengths sum to 4 but indices has 6 entries");
    add("lengths_sum_too_large" + w, bag_users, [=](scene& s) { s.widths(bits); s.lengths({2, 2, 3}); },
        errc::bad_lengths, "lengths[0..2] sum past len(indices) = 6 at lengths[2] = 3");
    add("negative_length" + w, bag_users, [=](scene& s) { s.widths(bits); s.lengths({2, -1, 2}); },
        errc::bad_lengths, "lengths[1] = -1 is negative");
  }
  add("fixed_length_0", bag_users, [](scene& s) { s.fixed(0); }, errc::bad_lengths, "fixed_length = 0 must be > 0");
  add("fixed_length_negative", bag_users, [](scene& s) { s.fixed(-2); }, errc::bad_lengths,
      "fixed_length = -2 must be > 0");
  add("fixed_length_not_dividing", bag_users, [](scene& s) { s.fixed(4); }, errc::bad_lengths,
      "len(indices) = 6 is not a multiple of fixed_length = 4");
  add("include_last_offset_with_lengths", bag_users,
      [](scene& s) { s.lengths({2, 2, 2}); s.opts.include_last_offset = true; }, errc::invalid_option,
      "include_last_offset applies only to bags given by offsets");
  add("include_last_offset_with_fixed_length", bag_users,
      [](scene& s) { s.fixed(2); s.opts.include_last_offset = true; }, errc::invalid_option,
      "include_last_offset applies only to bags given by offsets");

  // Per-sample weights.
  add("weights_too_short", bag_users, [](scene& s) { s.batch.per_sample_weights = s.weights(5); },
      errc::size_mismatch, "per_sample_weights has 5 entries but indices has 6");
  add("weights_too_long", bag_users, [](scene& s) { s.batch.per_sample_weights = s.weights(7); },
      errc::size_mismatch, "per_sample_weights has 7 entries but indices has 6");
  add("weights_with_mode_max", bag_users, [](scene& s) { s.max_mode(); s.batch.per_sample_weights = s.weights(6); },
      errc::invalid_option, "per_sample_weights cannot be used with mode max");
  add("weights_with_mode_none", bag_users, [](scene& s) { s.none_mode(); s.batch.per_sample_weights = s.weights(6); },
      errc::invalid_option, "per_sample_weights cannot be used with mode none");
  add("weights_grad_without_weights", {E::weights_grad}, [](scene& s) { s.batch.per_sample_weights = {}; },
      errc::invalid_option, "per_sample_weights_grad needs per_sample_weights");

  // Outputs (and the gradient inputs) of the wrong shape.
  add("out_too_few_rows", forwards, [](scene& s) { s.out.rows = 2; }, errc::size_mismatch,
      "out has 2 rows but the call needs 3");
  add("out_too_few_rows_mode_none", forwards, [](scene& s) { s.none_mode(); s.out.rows = 5; }, errc::size_mismatch,
      "out has 5 rows but the call needs 6");
  add("out_wrong_cols", forwards, [](scene& s) { s.out.cols = 3; }, errc::size_mismatch,
      "out has 3 columns but dim is 4");
  add("out_row_stride_below_cols", forwards, [](scene& s) { s.out.row_stride = 2; }, errc::invalid_shape,
      "out has row_stride 2 smaller than its dim 4");
  add("out_negative_rows", forwards, [](scene& s) { s.out.rows = -1; }, errc::invalid_shape,
      "out has -1 rows (must be >= 0)");
  add("grad_output_too_few_rows", {E::backward_dense, E::backward_sparse, E::weights_grad},
      [](scene& s) { s.grad_output.rows = 2; }, errc::size_mismatch, "grad_output has 2 rows but the call needs 3");
  add("grad_output_wrong_cols", {E::weights_grad}, [](scene& s) { s.grad_output.cols = 3; }, errc::size_mismatch,
      "grad_output has 3 columns but dim is 4");
  add("grad_table_wrong_cols", {E::backward_dense}, [](scene& s) { s.grad_table.cols = 3; }, errc::size_mismatch,
      "grad_output has 4 columns but dim is 3");
  add("grad_table_too_few_rows", {E::backward_dense}, [](scene& s) { s.grad_table.rows = 5; },
      errc::index_out_of_range, "indices[4] = 5 is out of range [0, 5)");
  add("grad_weights_too_short", {E::weights_grad}, [](scene& s) { s.grad_weights = s.grad_weights.first(5); },
      errc::size_mismatch, "grad_weights has 5 entries but indices has 6");
  add("grad_weights_too_long", {E::weights_grad},
      [](scene& s) { s.grad_weights = std::span(s.grad_weights_store).first(7); }, errc::size_mismatch,
      "grad_weights has 7 entries but indices has 6");

  // Null pointers with non-zero sizes.
  add("null_table", table_users, [](scene& s) { s.table.data = nullptr; }, errc::null_pointer,
      "table is null but has 10 rows");
  add("null_grad_table", {E::backward_dense}, [](scene& s) { s.grad_table.data = nullptr; }, errc::null_pointer,
      "grad_table is null but has 10 rows");
  add("null_indices", bag_users, [](scene& s) { s.batch.indices = index_span(nullptr, NNZ, index_type::i64); },
      errc::null_pointer, "indices is null but has size 6");
  add("null_renorm_rows", {E::renorm}, [](scene& s) { s.renorm_rows = index_span(nullptr, 4, index_type::i32); },
      errc::null_pointer, "rows is null but has size 4");
  add("null_offsets", bag_users, [](scene& s) { s.batch.boundaries = index_span(nullptr, B, index_type::i64); },
      errc::null_pointer, "offsets is null but has size 3");
  add("null_lengths", bag_users,
      [](scene& s) { s.lengths({2, 2, 2}); s.batch.boundaries = index_span(nullptr, B, index_type::i32); },
      errc::null_pointer, "lengths is null but has size 3");
  add("null_out", forwards, [](scene& s) { s.out.data = nullptr; }, errc::null_pointer, "out is null but has 3 rows");
  add("null_grad_output", {E::backward_dense, E::backward_sparse, E::weights_grad},
      [](scene& s) { s.grad_output.data = nullptr; }, errc::null_pointer, "grad_output is null but has 3 rows");
  add("null_weights", bag_users,
      [](scene& s) { s.batch.per_sample_weights = std::span<const float>(static_cast<const float*>(nullptr), NNZ); },
      errc::null_pointer, "per_sample_weights is null but has size 6");
  add("null_grad_weights", {E::weights_grad},
      [](scene& s) { s.grad_weights = std::span<float>(static_cast<float*>(nullptr), NNZ); }, errc::null_pointer,
      "grad_weights is null");

  // Shapes.
  add("table_dim_0", table_users, [](scene& s) { s.table.dim = 0; }, errc::invalid_shape,
      "table has dim 0 (must be > 0)");
  add("table_dim_negative", table_users, [](scene& s) { s.table.dim = -4; }, errc::invalid_shape,
      "table has dim -4 (must be > 0)");
  add("grad_table_dim_0", {E::backward_dense}, [](scene& s) { s.grad_table.cols = 0; }, errc::invalid_shape,
      "grad_table has dim 0 (must be > 0)");
  add("grad_output_dim_0", {E::backward_sparse}, [](scene& s) { s.grad_output.cols = 0; }, errc::invalid_shape,
      "grad_output has dim 0 (must be > 0)");
  add("table_negative_rows", table_users, [](scene& s) { s.table.rows = -1; }, errc::invalid_shape,
      "table has -1 rows (must be >= 0)");
  add("table_negative_rows", {E::backward_sparse}, [](scene& s) { s.table.rows = -1; }, errc::invalid_shape,
      "table_rows = -1 must be >= 0");
  add("grad_table_negative_rows", {E::backward_dense}, [](scene& s) { s.grad_table.rows = -1; },
      errc::invalid_shape, "grad_table has -1 rows (must be >= 0)");
  add("table_row_stride_below_dim", table_users, [](scene& s) { s.table.row_stride = 2; }, errc::invalid_shape,
      "table has row_stride 2 smaller than its dim 4");
  add("table_row_stride_negative", table_users, [](scene& s) { s.table.row_stride = -4; }, errc::invalid_shape,
      "table has row_stride -4 smaller than its dim 4");
  add("grad_table_row_stride_below_dim", {E::backward_dense}, [](scene& s) { s.grad_table.row_stride = 3; },
      errc::invalid_shape, "grad_table has row_stride 3 smaller than its dim 4");
  add("grad_output_row_stride_below_dim", {E::backward_dense, E::backward_sparse, E::weights_grad},
      [](scene& s) { s.grad_output.row_stride = 3; }, errc::invalid_shape,
      "grad_output has row_stride 3 smaller than its dim 4");

  // Byte counts that overflow: the pointers are real but far too short, so a check that ran after
  // a read would crash instead of failing.
  add("table_rows_overflow", table_users, [](scene& s) { s.table.rows = huge; }, errc::size_overflow,
      "table of " + H + " rows x stride 4 floats overflows the address space");
  add("table_row_stride_overflow", table_users, [](scene& s) { s.table.row_stride = huge / 2; },
      errc::size_overflow, "table of 10 rows x stride " + std::to_string(huge / 2) + " floats overflows");
  add("grad_table_rows_overflow", {E::backward_dense}, [](scene& s) { s.grad_table.rows = huge; },
      errc::size_overflow, "grad_table of " + H + " rows x stride 4 floats overflows");
  add("out_rows_overflow", forwards, [](scene& s) { s.out.rows = huge; }, errc::size_overflow,
      "out of " + H + " rows x stride 4 floats overflows");
  add("grad_output_rows_overflow", {E::backward_dense, E::backward_sparse, E::weights_grad},
      [](scene& s) { s.grad_output.rows = huge; }, errc::size_overflow,
      "grad_output of " + H + " rows x stride 4 floats overflows");
  add("indices_size_overflow", bag_users, [](scene& s) { s.batch.indices.size = huge; }, errc::size_overflow,
      "indices of " + H + " elements overflows the address space");
  add("indices_size_overflow_i32", bag_users,
      [](scene& s) { s.batch.indices = index_span(s.idx32.data(), huge, index_type::i32); }, errc::size_overflow,
      "indices of " + H + " elements overflows the address space");
  add("offsets_size_overflow", bag_users, [](scene& s) { s.batch.boundaries.size = huge; }, errc::size_overflow,
      "offsets of " + H + " elements overflows the address space");
  add("weights_size_overflow", bag_users,
      [](scene& s) { s.batch.per_sample_weights = std::span<const float>(s.weights_store.data(), std::size_t(huge)); },
      errc::size_overflow, "per_sample_weights of " + H + " elements overflows the address space");
  add("renorm_rows_size_overflow", {E::renorm}, [](scene& s) { s.renorm_rows.size = huge; }, errc::size_overflow,
      "rows of " + H + " elements overflows the address space");

  // Options.
  add("padding_idx_too_large", bag_users, [](scene& s) { s.opts.padding_idx = 10; }, errc::invalid_option,
      "padding_idx = 10 is out of range [-10, 10)");
  add("padding_idx_too_small", bag_users, [](scene& s) { s.opts.padding_idx = -11; }, errc::invalid_option,
      "padding_idx = -11 is out of range [-10, 10)");
  add("max_norm_0", bag_users, [](scene& s) { s.opts.max_norm = 0.0f; }, errc::invalid_option, "max_norm = 0");
  add("max_norm_negative", bag_users, [](scene& s) { s.opts.max_norm = -1.0f; }, errc::invalid_option,
      "max_norm = -1");
  add("max_norm_nan", bag_users, [](scene& s) { s.opts.max_norm = nan; }, errc::invalid_option, "max_norm = nan");
  add("norm_type_0", bag_users, [](scene& s) { s.opts.max_norm = 1.0f; s.opts.norm_type = 0.0f; },
      errc::invalid_option, "norm_type = 0");
  add("norm_type_negative", bag_users, [](scene& s) { s.opts.max_norm = 1.0f; s.opts.norm_type = -2.0f; },
      errc::invalid_option, "norm_type = -2");
  add("norm_type_nan", bag_users, [](scene& s) { s.opts.max_norm = 1.0f; s.opts.norm_type = nan; },
      errc::invalid_option, "norm_type = nan");
  add("renorm_max_norm_0", {E::renorm}, [](scene& s) { s.renorm_max_norm = 0.0f; }, errc::invalid_option,
      "max_norm = 0");
  add("renorm_max_norm_negative", {E::renorm}, [](scene& s) { s.renorm_max_norm = -1.0f; }, errc::invalid_option,
      "max_norm = -1");
  add("renorm_max_norm_nan", {E::renorm}, [](scene& s) { s.renorm_max_norm = nan; }, errc::invalid_option,
      "max_norm = nan");
  add("renorm_norm_type_0", {E::renorm}, [](scene& s) { s.renorm_norm_type = 0.0f; }, errc::invalid_option,
      "norm_type = 0");
  add("max_norm_in_place_on_const_table", {E::forward_const},
      [](scene& s) { s.opts.max_norm = 0.01f; s.opts.max_norm_mode = max_norm_flavour::in_place; },
      errc::invalid_option, "max_norm_mode in_place needs a mutable table");
  add("negative_max_threads", bag_users, [](scene& s) { s.opts.execution.max_threads = -1; }, errc::invalid_option,
      "execution.max_threads = -1 must be >= 0");
  add("prefetch_level_out_of_enum", bag_users,
      [](scene& s) { s.opts.execution.prefetch.level = static_cast<prefetch_level>(9); }, errc::invalid_option,
      "execution.prefetch.level = 9 is not a prefetch level");
  add("negative_prefetch_rows", bag_users, [](scene& s) { s.opts.execution.prefetch.rows = -4; },
      errc::invalid_option, "execution.prefetch.rows = -4 must be >= 0");
  if (const std::optional<isa> missing = missing_isa()) {
    add("unsupported_isa", bag_users, [=](scene& s) { s.opts.execution.isa = *missing; }, errc::unsupported_isa,
        "options.execution.isa asks for ISA " + std::string(to_string(*missing)));
  } else {
    cases.push_back({"unsupported_isa", E::forward, {}, errc::unsupported_isa, {}, "every ISA is available here"});
  }

  // In-place max_norm writes the table before the gather: every later check must still come first.
  const auto in_place = [](scene& s) { s.opts.max_norm = 0.01f; s.opts.max_norm_mode = max_norm_flavour::in_place; };
  add("in_place_max_norm_then_out_too_small", {E::forward}, [=](scene& s) { in_place(s); s.out.rows = 2; },
      errc::size_mismatch, "out has 2 rows but the call needs 3");
  add("in_place_max_norm_then_out_overlapping_table", {E::forward},
      [=](scene& s) { in_place(s); s.out.data = s.table_store.data() + (R - 1) * D; }, errc::aliasing,
      "out overlaps table");
  add("in_place_max_norm_then_bad_argmax", {E::forward},
      [=](scene& s) { s.max_mode(); in_place(s); s.argmax_out = s.argmax_out.first(11); }, errc::size_mismatch,
      "argmax has 11 entries but the call needs 3 x 4");
  if (const std::optional<isa> missing = missing_isa())
    add("in_place_max_norm_then_unsupported_isa", {E::forward},
        [=](scene& s) { in_place(s); s.opts.execution.isa = *missing; }, errc::unsupported_isa,
        "options.execution.isa asks for ISA " + std::string(to_string(*missing)));

  // argmax (mode max).
  add("argmax_with_mode_sum", forwards, [](scene& s) { s.argmax_out = s.argmax_store; }, errc::invalid_option,
      "argmax is only defined for mode max");
  add("argmax_with_mode_sum", backwards, [](scene& s) { s.argmax_in = s.argmax_valid; }, errc::invalid_option,
      "argmax is only defined for mode max");
  add("argmax_with_mode_mean", backwards,
      [](scene& s) { s.opts.mode = mode::mean; s.argmax_in = s.argmax_valid; }, errc::invalid_option,
      "argmax is only defined for mode max");
  add("mode_max_backward_without_argmax", backwards, [](scene& s) { s.max_mode(); s.argmax_in = {}; },
      errc::size_mismatch, "mode max needs the argmax that forward produced");
  add("argmax_too_short", forwards, [](scene& s) { s.max_mode(); s.argmax_out = s.argmax_out.first(11); },
      errc::size_mismatch, "argmax has 11 entries but the call needs 3 x 4");
  add("argmax_too_short", backwards, [](scene& s) { s.max_mode(); s.argmax_in = s.argmax_in.first(11); },
      errc::size_mismatch, "argmax has 11 entries but the call needs 3 x 4");
  add("argmax_from_another_bag", backwards, [](scene& s) { s.max_mode(); s.argmax_valid[1 * D + 2] = 1; },
      errc::invalid_option, "argmax[1][2] = 1 is not a non-padding index of bag 1");
  add("argmax_outside_the_table", backwards, [](scene& s) { s.max_mode(); s.argmax_valid[2 * D + 3] = 99; },
      errc::invalid_option, "argmax[2][3] = 99 is not a non-padding index of bag 2");
  add("argmax_minus_1_for_bag_with_rows", backwards, [](scene& s) { s.max_mode(); s.argmax_valid[0] = -1; },
      errc::invalid_option, "argmax[0][0] = -1 is not a non-padding index of bag 0");
  add("argmax_pointing_at_padding", backwards, [](scene& s) { s.max_mode(); s.opts.padding_idx = 3; },
      errc::invalid_option, "argmax[1][0] = 3 is not a non-padding index of bag 1");
  add("argmax_not_minus_1_for_padding_only_bag", backwards,
      [](scene& s) { s.max_mode(); s.opts.padding_idx = 1; s.index(1, 1); }, errc::invalid_option,
      "argmax[0][0] = 1 must be -1: bag 0 has no non-padding index");

  // Aliasing: an output overlapping an input or another output.
  add("out_is_the_table", forwards, [](scene& s) { s.out.data = s.table_store.data(); }, errc::aliasing,
      "out overlaps table");
  add("out_overlapping_the_tables_last_row", forwards,
      [](scene& s) { s.out.data = s.table_store.data() + (R - 1) * D; }, errc::aliasing, "out overlaps table");
  add("out_overlapping_indices", forwards, [](scene& s) { s.out.data = reinterpret_cast<float*>(s.idx64.data()); },
      errc::aliasing, "out overlaps indices");
  add("out_overlapping_argmax", forwards,
      [](scene& s) { s.max_mode(); s.out.data = reinterpret_cast<float*>(s.argmax_store.data()); }, errc::aliasing,
      "out overlaps argmax");
  add("grad_table_overlapping_grad_output", {E::backward_dense},
      [](scene& s) { s.grad_table.data = s.grad_output_store.data(); }, errc::aliasing,
      "grad_table overlaps grad_output");
  add("grad_output_inside_sparse_gradient", {E::backward_sparse},
      [](scene& s) { s.grad_output.data = s.sparse.values.data(); }, errc::aliasing,
      "grad.values overlaps grad_output");
  add("grad_weights_overlapping_weights", {E::weights_grad},
      [](scene& s) { s.grad_weights = std::span(s.weights_store).first(NNZ); }, errc::aliasing,
      "grad_weights overlaps per_sample_weights");

  // Enumerations out of range (as a binding passing raw integers would produce).
  add("layout_out_of_range", bag_users, [](scene& s) { s.batch.layout = static_cast<bag_layout>(7); },
      errc::invalid_option, "bags.layout = 7 is not a layout");
  add("mode_out_of_range", {E::forward, E::forward_const, E::backward_dense, E::backward_sparse},
      [](scene& s) { s.opts.mode = static_cast<mode>(7); }, errc::invalid_option, "mode = 7");
  add("max_norm_mode_out_of_range", forwards,
      [](scene& s) { s.opts.max_norm = 0.01f; s.opts.max_norm_mode = static_cast<max_norm_flavour>(9); },
      errc::invalid_option, "max_norm_mode = 9");
  add("index_type_out_of_range", bag_users, [](scene& s) { s.batch.indices.type = static_cast<index_type>(5); },
      errc::invalid_option, "indices.type = 5");

  // A null argmax with a non-zero size. Last: a library that reads it crashes the binary.
  add("null_argmax", forwards,
      [](scene& s) {
        s.max_mode();
        s.argmax_out = std::span<std::int64_t>(static_cast<std::int64_t*>(nullptr), B * D);
      },
      errc::null_pointer, "argmax is null but has size 12");
  add("null_argmax", backwards,
      [](scene& s) {
        s.max_mode(); s.argmax_in = std::span<const std::int64_t>(static_cast<const std::int64_t*>(nullptr), B * D);
      },
      errc::null_pointer, "argmax is null but has size 12");
  return cases;
}

// gtest prints a failing parameter with this rather than as raw bytes.
void PrintTo(const bad_case& c, std::ostream* os) { *os << c.name; }

// ---------------------------------------------------------------------------------------------

// The scene itself is valid for every entry point and mode the cases start from, and its valid
// calls write the buffers the snapshot watches: a rejected call that wrote would be seen.
TEST(BadInputScene, IsValidAndItsCallsWriteWhatTheSnapshotWatches) {
  for (entry e : {entry::forward, entry::forward_const, entry::backward_dense, entry::backward_sparse,
                  entry::weights_grad, entry::renorm})
    for (int m = 0; m < 3; ++m) {
      if (m > 0 && (e == entry::weights_grad || e == entry::renorm)) continue;
      SCOPED_TRACE(std::string(name_of(e)) + (m == 0 ? " sum" : m == 1 ? " max" : " none"));
      scene s;
      if (m == 1) s.max_mode();
      if (m == 2) s.none_mode();
      const std::vector<region> before = snapshot(s);
      EXPECT_NO_THROW(invoke(s, e));
      EXPECT_FALSE(unchanged(before, snapshot(s)));
    }
}

class BadInput : public ::testing::TestWithParam<bad_case> {
 protected:
  static void SetUpTestSuite() { before_any_case() = run_valid_calls(); }
  static valid_results& before_any_case() {
    static valid_results r;
    return r;
  }
};

TEST_P(BadInput, ThrowsNamingTheCulpritAndWritesNothing) {
  const bad_case& c = GetParam();
  if (!c.skip.empty()) GTEST_SKIP() << c.skip;
  {
    scene s;
    c.setup(s);
    expect_rejected(s, c.where, c.code, c.fragment);
  }
  SCOPED_TRACE("valid calls after the rejected one");
  expect_same(before_any_case(), run_valid_calls());
}

INSTANTIATE_TEST_SUITE_P(Cases, BadInput, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<bad_case>& info) { return info.param.name; });

}  // namespace
}  // namespace embag

// Regressions found in review, named after what they were.
namespace embag {
namespace {

TEST(ReviewRegression, InPlaceMaxNormRejectsWeightsInsideTheTable) {
  std::vector<float> table = {3, 4, 1, 0};
  const std::vector<float> before = table;
  std::vector<std::int64_t> indices = {0, 1}, offsets = {0};
  std::vector<float> out(2, -1.0f);
  options opts;
  opts.max_norm = 1.0f;
  opts.max_norm_mode = max_norm_flavour::in_place;
  const bags batch = bags::from_offsets(indices, offsets, std::span<const float>(table.data(), 2));
  try {
    forward(table_view<float>{table.data(), 2, 2, 2}, batch, opts, {out.data(), 1, 2, 2});
    ADD_FAILURE() << "weights that live in the table an in-place renorm writes must be rejected";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::aliasing);
    EXPECT_NE(std::string(e.what()).find("table overlaps per_sample_weights"), std::string::npos) << e.what();
  }
  EXPECT_EQ(table, before);
  EXPECT_EQ(out, std::vector<float>(2, -1.0f));
}

TEST(ReviewRegression, FixedLengthBagsIgnoreTheUnusedBoundariesSpan) {
  std::vector<float> table = {1, 2, 3, 4};
  std::vector<std::int64_t> indices = {0, 1};
  std::vector<float> out(2, 0.0f);
  bags batch = bags::fixed(indices, 2);
  batch.boundaries = index_span(out.data(), std::int64_t{1} << 62, index_type::i64);  // stale, never read
  forward(table_view<const float>{table.data(), 2, 2, 2}, batch, options{}, {out.data(), 1, 2, 2});
  EXPECT_EQ(out, (std::vector<float>{4, 6}));
}

TEST(ReviewRegression, HugeTableDimensionIsAnOverflowError) {
  try {
    table t(0, std::numeric_limits<std::int64_t>::max());
    ADD_FAILURE() << "table(0, INT64_MAX) must not construct";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::size_overflow);
  }
}

TEST(ReviewRegression, HugeRowStrideOfOneRowTable) {
  std::vector<float> table = {5};
  std::vector<std::int64_t> indices = {0, 0}, offsets = {0};
  std::vector<float> out(1, 0.0f);
  for (isa which : available_isas()) {
    options opts;
    opts.execution.isa = which;
    forward(table_view<const float>{table.data(), 1, 1, std::numeric_limits<std::int64_t>::max()},
            bags::from_offsets(indices, offsets), opts, {out.data(), 1, 1, 1});
    EXPECT_EQ(out[0], 10.0f) << to_string(which);
  }
}

// Found by embag fuzz: a gradient table claiming 2^55 rows over a small buffer was accepted (its
// bytes fit in int64), and whether it "overlapped" the other arguments depended on where the
// allocator had put them. A matrix larger than any address space is now an overflow error.
TEST(FuzzRegression, MatrixLargerThanAnyAddressSpaceIsAnOverflowError) {
  std::vector<std::int64_t> indices = {0, 1}, offsets = {0};
  std::vector<float> grad_output(3, 1.0f), grad(6, 0.0f), table(6, 1.0f), out(3, 0.0f);
  const std::int64_t claimed_rows = std::int64_t{1} << 55;
  const bags batch = bags::from_offsets(indices, offsets);
  for (isa which : available_isas()) {
    options opts;
    opts.execution.isa = which;
    try {
      backward_dense(batch, opts, {grad_output.data(), 1, 3, 3}, {grad.data(), claimed_rows, 3, 3});
      ADD_FAILURE() << "backward_dense accepted a grad_table of 2^55 rows on " << to_string(which);
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::size_overflow) << e.what();
      EXPECT_NE(std::string(e.what()).find("grad_table of 36028797018963968 rows"), std::string::npos) << e.what();
    }
    try {
      forward(table_view<const float>{table.data(), claimed_rows, 3, 3}, batch, opts, {out.data(), 1, 3, 3});
      ADD_FAILURE() << "forward accepted a table of 2^55 rows on " << to_string(which);
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::size_overflow) << e.what();
    }
  }
  EXPECT_EQ(grad, std::vector<float>(6, 0.0f));
  EXPECT_EQ(out, std::vector<float>(3, 0.0f));
}

// Validation scans the indices at the active ISA's width and rescans only on failure: the error
// must name the same first culprit the scalar rule names, wherever it sits (head, SIMD body, tail),
// whatever the other bad entries, for both index types, on every ISA.
TEST(IndexScan, NamesTheFirstCulpritOnEveryIsa) {
  const isa before = active_isa();
  constexpr std::int64_t rows = 1000;
  std::uint64_t state = 12345;
  const auto next = [&] { return (state = state * 6364136223846793005u + 1442695040888963407u) >> 33; };
  for (isa which : available_isas()) {
    force_isa(which);
    SCOPED_TRACE(to_string(which));
    for (int round = 0; round < 300; ++round) {
      const std::int64_t n = 1 + static_cast<std::int64_t>(next() % 200);
      std::vector<std::int64_t> wide(n);
      for (auto& v : wide) v = static_cast<std::int64_t>(next() % rows);
      std::int64_t first_bad = -1;
      for (int bad = 0; bad < 1 + round % 3; ++bad) {
        const std::int64_t at = static_cast<std::int64_t>(next() % n);
        const std::int64_t values[] = {-1, rows, rows + 7, std::numeric_limits<std::int32_t>::min(),
                                       std::numeric_limits<std::int32_t>::max()};
        wide[at] = values[next() % 5];
        first_bad = first_bad < 0 ? at : std::min(first_bad, at);
      }
      std::vector<std::int32_t> narrow(wide.begin(), wide.end());
      const std::string want = "indices[" + std::to_string(first_bad) + "] = " + std::to_string(wide[first_bad]) +
                               " is out of range [0, 1000)";
      std::vector<float> table_rows(rows * 2, 1.0f), out(n * 2, 0.0f);
      const std::vector<std::int64_t> offsets = {0};
      options opts;
      opts.mode = mode::sum;
      for (const index_span ix : {index_span(wide), index_span(narrow)}) {
        try {
          forward(table_view<const float>{table_rows.data(), rows, 2, 2}, bags::from_offsets(ix, offsets), opts,
                  {out.data(), 1, 2});
          ADD_FAILURE() << "accepted " << want;
        } catch (const error& e) {
          EXPECT_EQ(e.code(), errc::index_out_of_range);
          EXPECT_EQ(std::string(e.what()), want);
        }
      }
      EXPECT_EQ(out, std::vector<float>(n * 2, 0.0f));
    }
  }
  force_isa(before);
}

}  // namespace
}  // namespace embag
