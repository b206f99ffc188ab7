#include "fuzz/differential.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>
#include <type_traits>
#include <utility>

namespace embag::fuzz {

std::int64_t choices::below(std::int64_t n) {
  if (n <= 1) return 0;
  int bytes = 1;
  while (bytes < 8 && (std::uint64_t{1} << (8 * bytes)) < static_cast<std::uint64_t>(n)) ++bytes;
  return static_cast<std::int64_t>(take(bytes) % static_cast<std::uint64_t>(n));
}

std::int64_t choices::between(std::int64_t lo, std::int64_t hi) { return lo + below(hi - lo + 1); }

float choices::value() {
  switch (below(16)) {
    case 0: return std::numeric_limits<float>::quiet_NaN();
    case 1: return one_in(2) ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
    case 2: return one_in(2) ? 1e-40f : -1e-40f;  // denormal
    case 3: return -0.0f;
    case 4: return one_in(2) ? 3e38f : -3e38f;
    default: return static_cast<float>(between(-4096, 4096)) / 1024.0f;
  }
}

std::uint64_t seeded_choices::take(int bytes) {
  const std::uint64_t bits = generator_();
  return bytes >= 8 ? bits : bits & ((std::uint64_t{1} << (8 * bytes)) - 1);
}

std::uint64_t byte_choices::take(int bytes) {
  std::uint64_t bits = 0;
  for (int i = 0; i < bytes && size_ > 0; ++i, ++data_, --size_) bits = bits << 8 | *data_;
  return bits;
}

compressed_table_view fuzz_call::compressed() const {
  return {stored.data() + stored_offset, rows, dim, stored_stride, element_type};
}

bags fuzz_call::batch() const {
  const std::int64_t nnz = static_cast<std::int64_t>(index32 ? indices32.size() : indices64.size());
  bags b;
  b.indices = null_indices ? index_span(nullptr, nnz, index32 ? index_type::i32 : index_type::i64)
              : index32    ? index_span(indices32)
                           : index_span(indices64);
  b.layout = layout;
  if (layout == bag_layout::fixed_length) b.fixed_length = fixed_length;
  else b.boundaries = boundary32 ? index_span(boundaries32) : index_span(boundaries64);
  b.per_sample_weights = weights;
  return b;
}

namespace {

// Bulk values (table, weights, dY) come from a generator seeded by one choice, with a few special
// values placed by further choices: a fuzzer input stays short while it still steers NaN and Inf.
std::vector<float> bulk_values(choices& source, std::int64_t count) {
  std::mt19937 generator(static_cast<std::uint32_t>(source.below(std::int64_t{1} << 32)));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(count));
  for (float& x : v) x = normal(generator);
  if (count > 0)
    for (std::int64_t k = source.below(4); k > 0; --k) v[static_cast<std::size_t>(source.below(count))] = source.value();
  return v;
}

// The table's rows in a random element type, at a random stride and misalignment: quantised when
// the rows allow it and the draw says so, else raw bytes (NaN scales, Inf halves, anything).
// Returns how the rows were made.
const char* store_rows(choices& source, fuzz_call& c) {
  static const dtype types[] = {dtype::f16, dtype::bf16, dtype::int8_rowwise, dtype::int4_rowwise, dtype::f32};
  c.element_type = types[source.below(5)];
  const std::int64_t bytes = row_bytes(c.element_type, c.dim);
  c.stored_stride = bytes + (source.one_in(4) ? source.between(1, 9) : 0);
  c.stored_offset = source.one_in(4) ? source.between(1, 3) : 0;
  c.stored.assign(static_cast<std::size_t>(c.stored_offset + c.rows * c.stored_stride), std::byte{0});
  if (source.one_in(3)) {
    std::mt19937 generator(static_cast<std::uint32_t>(source.below(std::int64_t{1} << 32)));
    for (std::byte& b : c.stored) b = static_cast<std::byte>(generator());
    return "bytes";
  }
  try {
    const compressed_table q = quantize(table_view<const float>{c.table.data(), c.rows, c.dim, c.row_stride}, c.element_type);
    for (std::int64_t r = 0; r < c.rows; ++r)
      std::memcpy(c.stored.data() + c.stored_offset + r * c.stored_stride, q.view().data + r * bytes,
                  static_cast<std::size_t>(bytes));
    return "quantised";
  } catch (const error&) {  // a row the type cannot hold (NaN, beyond fp16): all zero bytes
    return "zeros";
  }
}

// The malformations a call may carry; each is named in the recipe.
enum class fault {
  index_too_large, index_negative, offsets_not_from_zero, offsets_decreasing, offset_past_end,
  last_offset_wrong, length_negative, lengths_wrong_sum, weights_wrong_length, output_rows_wrong,
  output_stride_small, padding_out_of_range, max_norm_bad, norm_type_bad, fixed_length_bad,
  row_stride_small, null_indices, weights_with_max_or_none, last_offset_without_offsets, rows_huge,
  count
};

constexpr const char* fault_names[] = {
    "index_too_large", "index_negative", "offsets_not_from_zero", "offsets_decreasing", "offset_past_end",
    "last_offset_wrong", "length_negative", "lengths_wrong_sum", "weights_wrong_length", "output_rows_wrong",
    "output_stride_small", "padding_out_of_range", "max_norm_bad", "norm_type_bad", "fixed_length_bad",
    "row_stride_small", "null_indices", "weights_with_max_or_none", "last_offset_without_offsets", "rows_huge"};
static_assert(std::size(fault_names) == static_cast<std::size_t>(fault::count));

}  // namespace

fuzz_call draw_call(choices& source, const call_limits& limits) {
  fuzz_call c;
  static const std::int64_t common_dims[] = {16, 32, 64, 128};
  c.dim = source.one_in(3) ? common_dims[source.below(4)] : source.between(1, limits.max_dim);
  c.rows = source.one_in(4) ? source.between(1, 4) : source.between(1, limits.max_rows);
  c.row_stride = c.dim + (source.one_in(4) ? source.between(1, 9) : 0);
  c.table = bulk_values(source, c.rows * c.row_stride);
  const char* stored_as = store_rows(source, c);
  c.opts.mode = static_cast<mode>(source.below(5));  // sum, mean, max, none, sqrtn
  c.index32 = source.one_in(2);
  c.boundary32 = source.one_in(2);
  c.layout = static_cast<bag_layout>(source.below(3));

  // bags: lengths, then indices (sometimes from a few rows only: repeats, ties for max)
  const std::int64_t num_bags = source.between(0, limits.max_bags);
  std::vector<std::int64_t> lengths(static_cast<std::size_t>(num_bags));
  if (c.layout == bag_layout::fixed_length) c.fixed_length = source.between(1, limits.max_bag_length);
  for (std::int64_t& n : lengths)
    n = c.layout == bag_layout::fixed_length ? c.fixed_length
        : source.one_in(8)                    ? source.between(0, 100)
                                              : source.between(0, limits.max_bag_length);
  std::int64_t nnz = 0;
  for (std::int64_t n : lengths) nnz += n;
  const std::int64_t index_range = source.one_in(3) ? std::min<std::int64_t>(c.rows, 3) : c.rows;
  c.indices64.resize(static_cast<std::size_t>(nnz));
  for (std::int64_t& i : c.indices64) i = source.below(index_range);

  if (c.opts.mode == mode::sum || c.opts.mode == mode::mean || c.opts.mode == mode::sqrtn)
    if (source.one_in(2)) c.weights = bulk_values(source, nnz);
  if (source.one_in(4)) c.opts.padding_idx = source.between(-c.rows, c.rows - 1);
  if (c.layout == bag_layout::offsets) c.opts.include_last_offset = source.one_in(3);
  if (source.one_in(4)) {
    static const float norm_types[] = {1.0f, 2.0f, 3.0f, std::numeric_limits<float>::infinity()};
    c.opts.max_norm = static_cast<float>(source.between(1, 60)) / 20.0f;
    c.opts.norm_type = norm_types[source.below(4)];
    c.opts.max_norm_mode = source.one_in(2) ? max_norm_flavour::clip : max_norm_flavour::in_place;
  }
  c.opts.scale_grad_by_freq = source.one_in(4);
  c.opts.execution.max_threads = static_cast<int>(source.between(0, limits.max_threads));
  c.opts.execution.prefetch = {static_cast<prefetch_level>(source.below(4)), static_cast<int>(source.between(0, 64))};
  c.out_rows = c.opts.mode == mode::none ? nnz : num_bags;
  c.out_stride = c.dim + (source.one_in(4) ? source.between(1, 5) : 0);

  std::vector<std::int64_t> bounds;
  if (c.layout == bag_layout::offsets) {
    std::int64_t start = 0;
    for (std::int64_t n : lengths) bounds.push_back(std::exchange(start, start + n));
    if (c.opts.include_last_offset) bounds.push_back(nnz);
  } else if (c.layout == bag_layout::lengths) {
    bounds = lengths;
  }

  std::optional<fault> injected;
  if (source.one_in(3)) injected = static_cast<fault>(source.below(static_cast<std::int64_t>(fault::count)));
  const auto at = [&](std::int64_t n) { return static_cast<std::size_t>(source.below(n)); };
  const std::int64_t bound_count = static_cast<std::int64_t>(bounds.size());
  if (injected) switch (*injected) {
      case fault::index_too_large:
        if (nnz > 0) c.indices64[at(nnz)] = c.rows + source.below(3);
        break;
      case fault::index_negative:
        if (nnz > 0) c.indices64[at(nnz)] = -1 - source.below(3);
        break;
      case fault::offsets_not_from_zero:
        if (c.layout == bag_layout::offsets && bound_count > 0) bounds[0] = source.between(1, 3);
        break;
      case fault::offsets_decreasing:
        if (c.layout == bag_layout::offsets && bound_count > 1) {
          const std::size_t k = 1 + at(bound_count - 1);
          bounds[k] = bounds[k - 1] - 1;
        }
        break;
      case fault::offset_past_end:
        if (c.layout == bag_layout::offsets && bound_count > 0) bounds.back() = nnz + 1 + source.below(3);
        break;
      case fault::last_offset_wrong:
        c.layout = bag_layout::offsets;
        c.opts.include_last_offset = true;
        bounds.assign(1, 0);
        bounds.push_back(nnz + (source.one_in(2) ? 1 : -1));
        c.out_rows = c.opts.mode == mode::none ? nnz : 1;
        break;
      case fault::length_negative:
        if (c.layout == bag_layout::lengths && bound_count > 0) bounds[at(bound_count)] = -1 - source.below(3);
        break;
      case fault::lengths_wrong_sum:
        if (c.layout == bag_layout::lengths && bound_count > 0) bounds[at(bound_count)] += 1;
        break;
      case fault::weights_wrong_length:
        if (!c.weights.empty() && source.one_in(2)) c.weights.pop_back();
        else c.weights.push_back(1.0f);
        break;
      case fault::output_rows_wrong: c.out_rows += source.one_in(2) ? 1 : -1; break;
      case fault::output_stride_small: c.out_stride = c.dim - 1; break;
      case fault::padding_out_of_range:
        c.opts.padding_idx = source.one_in(2) ? c.rows + source.below(3) : -c.rows - 1 - source.below(3);
        break;
      case fault::max_norm_bad:
        c.opts.max_norm = source.one_in(2) ? -static_cast<float>(source.below(2)) : std::numeric_limits<float>::quiet_NaN();
        break;
      case fault::norm_type_bad:
        c.opts.max_norm = 1.0f;
        c.opts.norm_type = source.one_in(2) ? -static_cast<float>(source.below(2)) : std::numeric_limits<float>::quiet_NaN();
        break;
      case fault::fixed_length_bad:
        c.layout = bag_layout::fixed_length;
        c.fixed_length = source.one_in(2) ? -source.below(2) : nnz + 1;
        break;
      case fault::row_stride_small:
        c.row_stride = c.dim - 1 - source.below(2);
        c.stored_stride = row_bytes(c.element_type, c.dim) - 1;
        break;
      case fault::null_indices: c.null_indices = nnz > 0; break;
      case fault::weights_with_max_or_none:
        c.opts.mode = source.one_in(2) ? mode::max : mode::none;
        c.weights = bulk_values(source, nnz);
        break;
      case fault::last_offset_without_offsets:
        c.layout = source.one_in(2) ? bag_layout::lengths : bag_layout::fixed_length;
        c.opts.include_last_offset = true;
        break;
      case fault::rows_huge: c.rows = std::numeric_limits<std::int64_t>::max() / (source.between(1, 4) * c.row_stride); break;
      case fault::count: break;
    }
  c.indices32.assign(c.indices64.begin(), c.indices64.end());
  c.boundaries64 = bounds;
  c.boundaries32.assign(bounds.begin(), bounds.end());
  c.grad_output = bulk_values(source, std::max<std::int64_t>(c.out_rows, 0) * c.dim);

  static const char* const layouts[] = {"offsets", "lengths", "fixed"};
  static const char* const prefetches[] = {"auto", "none", "l1", "l2"};
  std::ostringstream s;
  s << "R=" << c.rows << " D=" << c.dim << " stride=" << c.row_stride << " B=" << num_bags << " nnz=" << nnz
    << " mode=" << to_string(c.opts.mode) << " layout=" << layouts[static_cast<int>(c.layout)]
    << (c.opts.include_last_offset ? "+last" : "") << " idx" << (c.index32 ? 32 : 64) << " bounds"
    << (c.boundary32 ? 32 : 64) << " weights=" << c.weights.size() << " padding=";
  if (c.opts.padding_idx) s << *c.opts.padding_idx;
  else s << "none";
  if (c.opts.max_norm)
    s << " max_norm=" << *c.opts.max_norm << " p=" << c.opts.norm_type
      << (c.opts.max_norm_mode == max_norm_flavour::clip ? " clip" : " in_place");
  s << " freq=" << c.opts.scale_grad_by_freq << " threads=" << c.opts.execution.max_threads
    << " prefetch=" << prefetches[static_cast<int>(c.opts.execution.prefetch.level)] << ':'
    << c.opts.execution.prefetch.rows << " out=" << c.out_rows << 'x' << c.out_stride
    << " stored=" << to_string(c.element_type) << ':' << stored_as << '+' << c.stored_offset << ':' << c.stored_stride
    << " fault=" << (injected ? fault_names[static_cast<int>(*injected)] : "none");
  c.recipe = s.str();
  return c;
}

std::vector<std::int64_t> bag_starts(const fuzz_call& c) {
  const std::int64_t nnz = c.batch().indices.size;
  const auto boundary = [&](std::size_t k) { return c.boundary32 ? std::int64_t{c.boundaries32[k]} : c.boundaries64[k]; };
  const std::size_t count = c.boundary32 ? c.boundaries32.size() : c.boundaries64.size();
  std::vector<std::int64_t> starts;
  switch (c.layout) {
    case bag_layout::offsets:
      for (std::size_t k = 0; k < count; ++k) starts.push_back(boundary(k));
      if (!c.opts.include_last_offset) starts.push_back(nnz);
      break;
    case bag_layout::lengths:
      starts.push_back(0);
      for (std::size_t k = 0; k < count; ++k) starts.push_back(starts.back() + boundary(k));
      break;
    case bag_layout::fixed_length:
      for (std::int64_t start = 0; start <= nnz; start += c.fixed_length) starts.push_back(start);
      break;
  }
  if (starts.empty()) starts.push_back(0);  // offsets with include_last_offset needs one entry; none: no bags
  return starts;
}

namespace {

// What one entry point did on one ISA: its error, or what it wrote.
struct outcome {
  std::optional<errc> code;
  std::string message;
  std::vector<float> floats;        // the main output (out, dense gradient, sparse values, weights gradient)
  std::vector<std::int64_t> ints;  // argmax, or the sparse rows
  std::vector<float> table;         // the table after an in-place forward
};

// Runs `call`, recording an embag::error instead of the results.
template <class Call>
void attempt(outcome& o, Call&& call) {
  try {
    call();
  } catch (const error& e) {
    o.code = e.code();
    o.message = e.what();
  }
}

std::string describe(const std::optional<errc>& code) {
  return code ? "error " + std::string(to_string(*code)) : std::string("accepted");
}

// Bitwise, except that any NaN equals any NaN: the sign and payload of NaN + NaN follow the
// operand order the compiler picked for a commutative addition, which no source order pins down.
template <class T>
bool same_value(const T& a, const T& b) {
  if constexpr (std::is_floating_point_v<T>)
    if (std::isnan(a) && std::isnan(b)) return true;
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <class T>
std::optional<std::string> first_difference(const char* what, const std::vector<T>& want, const std::vector<T>& got) {
  if (want.size() != got.size())
    return std::string(what) + ": " + std::to_string(got.size()) + " values, expected " + std::to_string(want.size());
  for (std::size_t i = 0; i < want.size(); ++i)
    if (!same_value(want[i], got[i])) {
      std::ostringstream s;
      s.precision(9);
      s << what << "[" << i << "] = " << got[i] << ", expected " << want[i];
      return s.str();
    }
  return std::nullopt;
}

std::int64_t safe_size(std::int64_t rows, std::int64_t cols) {
  return std::max<std::int64_t>(rows, 0) * std::max<std::int64_t>(cols, 0);
}

// The rows a buffer for a (rows x row_stride) call really has: the call may claim absurdly many.
std::int64_t real_rows(const fuzz_call& c) { return static_cast<std::int64_t>(c.table.size()) / std::max<std::int64_t>(c.row_stride, 1); }

constexpr float canary = -12345.5f;
constexpr std::int64_t int_canary = -7;

// The bag of each index, for a call validation accepted.
std::vector<std::int64_t> bag_of_index(const fuzz_call& c) {
  const std::vector<std::int64_t> starts = bag_starts(c);
  std::vector<std::int64_t> bag(static_cast<std::size_t>(starts.back()));
  for (std::size_t b = 0; b + 1 < starts.size(); ++b)
    for (std::int64_t j = starts[b]; j < starts[b + 1]; ++j) bag[static_cast<std::size_t>(j)] = static_cast<std::int64_t>(b);
  return bag;
}

// The per-sample-weights gradient is a dot product whose lane order differs between ISAs: each
// value may differ from the reference's by rounding, on the scale of the magnitudes it sums.
std::optional<std::string> weights_grad_difference(const fuzz_call& c, const std::vector<float>& want,
                                                   const std::vector<float>& got) {
  if (want.size() != got.size()) return first_difference("weights_grad", want, got);
  const std::vector<std::int64_t> bag = bag_of_index(c);
  const auto norm = [](const float* v, std::int64_t n) {
    double s = 0;
    for (std::int64_t d = 0; d < n; ++d) s += double(v[d]) * v[d];
    return std::sqrt(s);
  };
  const std::int64_t stride = c.row_stride == 0 ? c.dim : c.row_stride;  // 0 means dense rows
  const auto index = [&](std::size_t j) { return c.index32 ? std::int64_t{c.indices32[j]} : c.indices64[j]; };
  const auto row = [&](std::size_t j) { return c.table.data() + index(j) * stride; };
  const std::int64_t padding = !c.opts.padding_idx ? -1 : *c.opts.padding_idx + (*c.opts.padding_idx < 0 ? c.rows : 0);
  // per bag: sum |w_i| |x_i|, the largest |x_i| and the divisor's sums, for the second term of a
  // scaled bag (mean, sqrtn)
  std::vector<double> weighted_norms(static_cast<std::size_t>(std::max<std::int64_t>(c.out_rows, 0)) + 1, 0.0);
  std::vector<double> largest_norms(weighted_norms.size(), 0.0);
  std::vector<float> weight_sums(weighted_norms.size(), 0.0f);  // as the library sums them: float, in order
  std::vector<float> weight_square_sums(weighted_norms.size(), 0.0f);
  for (std::size_t j = 0; j < want.size(); ++j) {
    if (index(j) == padding) continue;
    const std::size_t b = static_cast<std::size_t>(bag[j]);
    weighted_norms[b] += std::abs(double(c.weights[j])) * norm(row(j), c.dim);
    largest_norms[b] = std::max(largest_norms[b], norm(row(j), c.dim));
    weight_sums[b] += c.weights[j];
    weight_square_sums[b] += c.weights[j] * c.weights[j];
  }
  for (std::size_t j = 0; j < want.size(); ++j) {
    if (same_value(want[j], got[j])) continue;
    const std::size_t b = static_cast<std::size_t>(bag[j]);
    const double dy = norm(c.grad_output.data() + b * c.dim, c.dim);
    double scale = dy * norm(row(j), c.dim);
    double intermediate = scale;  // the largest magnitude the computation passes through
    if (c.opts.mode == mode::mean || c.opts.mode == mode::sqrtn) {
      const bool root = c.opts.mode == mode::sqrtn;
      const double s = root ? std::sqrt(double(weight_square_sums[b])) : std::abs(double(weight_sums[b]));
      const double slope = root ? std::abs(double(c.weights[j])) / s : 1.0;  // d divisor / d w_j
      // every dot product of the bag enters the second term
      intermediate = std::max({scale, dy * weighted_norms[b], dy * largest_norms[b]});
      scale = (scale + slope * dy * weighted_norms[b] / s) / s;
    }
    // near float's range a different summation order may overflow where the reference did not
    constexpr double overflow_zone = std::numeric_limits<float>::max() / 16;
    if (!(intermediate < overflow_zone && scale < overflow_zone) ||
        std::abs(double(want[j]) - got[j]) <= 1e-4 * scale + 1e-30)
      continue;
    std::ostringstream s;
    s.precision(9);
    s << "weights_grad[" << j << "] = " << got[j] << ", expected " << want[j] << " (rounding scale " << scale << ")";
    return s.str();
  }
  return std::nullopt;
}

struct entry_point {
  const char* name;
  std::function<outcome(isa)> run;
  // what an outcome must hold when the call was rejected (the buffers as they were before)
  std::function<std::optional<std::string>(const outcome&)> untouched;
  // how an accepted outcome compares with the reference's
  std::function<std::optional<std::string>(const outcome& want, const outcome& got)> compare;
};

std::optional<std::string> exact(const outcome& want, const outcome& got) {
  if (auto d = first_difference("output", want.floats, got.floats)) return d;
  if (auto d = first_difference("indices", want.ints, got.ints)) return d;
  return first_difference("table", want.table, got.table);
}

options on(const fuzz_call& c, isa which) {
  options o = c.opts;
  o.execution.isa = which;
  return o;
}

std::vector<entry_point> entry_points(const fuzz_call& c, operation op) {
  const std::int64_t rows_held = real_rows(c);
  const std::int64_t out_cells = safe_size(c.out_rows, std::max(c.out_stride, c.dim));
  const std::int64_t argmax_cells = c.opts.mode == mode::max ? safe_size(c.out_rows, c.dim) : 0;
  const matrix_view<const float> dy{c.grad_output.data(), c.out_rows, c.dim, c.dim};
  const auto canaries = [](std::int64_t n) { return std::vector<float>(static_cast<std::size_t>(n), canary); };
  const auto unchanged = [=](const outcome& o) -> std::optional<std::string> {
    if (auto d = first_difference("output", canaries(static_cast<std::int64_t>(o.floats.size())), o.floats)) return d;
    if (auto d = first_difference("indices", std::vector<std::int64_t>(o.ints.size(), int_canary), o.ints)) return d;
    if (!o.table.empty()) return first_difference("table", c.table, o.table);
    return std::nullopt;
  };

  std::vector<entry_point> points;
  if (op == operation::forward) {
    points.push_back({"forward (read-only table)",
                      [=](isa which) {
                        outcome o{{}, {}, canaries(out_cells), std::vector<std::int64_t>(argmax_cells, int_canary), {}};
                        attempt(o, [&] {
                          forward(table_view<const float>{c.table.data(), c.rows, c.dim, c.row_stride}, c.batch(), on(c, which),
                                  {o.floats.data(), c.out_rows, c.dim, c.out_stride}, o.ints);
                        });
                        return o;
                      },
                      unchanged, exact});
    points.push_back({"forward (compressed table)",
                      [=](isa which) {
                        outcome o{{}, {}, canaries(out_cells), std::vector<std::int64_t>(argmax_cells, int_canary), {}};
                        attempt(o, [&] {
                          forward(c.compressed(), c.batch(), on(c, which), {o.floats.data(), c.out_rows, c.dim, c.out_stride},
                                  o.ints);
                        });
                        return o;
                      },
                      unchanged, exact});
    points.push_back({"forward (mutable table)",
                      [=](isa which) {
                        outcome o{{}, {}, canaries(out_cells), std::vector<std::int64_t>(argmax_cells, int_canary), c.table};
                        attempt(o, [&] {
                          forward(table_view<float>{o.table.data(), c.rows, c.dim, c.row_stride}, c.batch(), on(c, which),
                                  {o.floats.data(), c.out_rows, c.dim, c.out_stride}, o.ints);
                        });
                        return o;
                      },
                      unchanged, exact});
    return points;
  }

  // backward: max needs the winners forward found (the reference's; -1s if it refused the call)
  std::vector<std::int64_t> argmax(static_cast<std::size_t>(argmax_cells), -1);
  if (c.opts.mode == mode::max) {
    std::vector<float> out(static_cast<std::size_t>(out_cells));
    try {
      forward(table_view<const float>{c.table.data(), c.rows, c.dim, c.row_stride}, c.batch(), on(c, isa::reference),
              {out.data(), c.out_rows, c.dim, c.out_stride}, argmax);
    } catch (const error&) {
    }
  }
  const std::int64_t grad_cells = safe_size(std::min(c.rows, rows_held), c.dim);
  points.push_back({"backward_dense",
                    [=](isa which) {
                      outcome o;
                      o.floats.resize(static_cast<std::size_t>(grad_cells));
                      for (std::size_t i = 0; i < o.floats.size(); ++i) o.floats[i] = static_cast<float>(int(i % 5) - 2);
                      attempt(o, [&] { backward_dense(c.batch(), on(c, which), dy, {o.floats.data(), c.rows, c.dim, c.dim}, argmax); });
                      return o;
                    },
                    [=](const outcome& o) -> std::optional<std::string> {
                      for (std::size_t i = 0; i < o.floats.size(); ++i)
                        if (o.floats[i] != static_cast<float>(int(i % 5) - 2)) return "grad_table[" + std::to_string(i) + "] written";
                      return std::nullopt;
                    },
                    exact});
  points.push_back({"backward_sparse",
                    [=](isa which) {
                      sparse_gradient g{{int_canary}, canaries(c.dim), c.dim};
                      outcome o;
                      attempt(o, [&] { backward_sparse(c.rows, c.batch(), on(c, which), dy, g, argmax); });
                      o.ints = g.rows;
                      o.floats = g.values;
                      return o;
                    },
                    [=](const outcome& o) -> std::optional<std::string> {
                      if (o.ints != std::vector<std::int64_t>{int_canary} || o.floats != canaries(c.dim))
                        return std::string("the sparse gradient was written");
                      return std::nullopt;
                    },
                    exact});
  if (!c.weights.empty())
    points.push_back({"per_sample_weights_grad",
                      [=](isa which) {
                        outcome o{{}, {}, canaries(static_cast<std::int64_t>(c.weights.size())), {}, {}};
                        attempt(o, [&] {
                          per_sample_weights_grad(table_view<const float>{c.table.data(), c.rows, c.dim, c.row_stride},
                                                  c.batch(), on(c, which), dy, o.floats);
                        });
                        return o;
                      },
                      unchanged,
                      [=](const outcome& want, const outcome& got) { return weights_grad_difference(c, want.floats, got.floats); }});
  return points;
}

}  // namespace

verdict check_call(const fuzz_call& call, operation op) {
  verdict v;
  const std::vector<isa> isas = available_isas();
  for (const entry_point& point : entry_points(call, op)) {
    const outcome want = point.run(isa::reference);
    v.rejected = v.rejected || want.code.has_value();
    for (isa which : isas) {
      const outcome got = which == isa::reference ? want : point.run(which);
      const std::string where = std::string(point.name) + " on " + std::string(to_string(which)) + ": ";
      if (got.code != want.code) {
        v.mismatch = where + describe(got.code) + " (" + got.message + "), reference " + describe(want.code) + " (" +
                     want.message + ")";
        return v;
      }
      const std::optional<std::string> difference = got.code ? point.untouched(got) : point.compare(want, got);
      if (difference) {
        v.mismatch = where + (got.code ? "rejected (" + got.message + ") but " : "") + *difference;
        return v;
      }
    }
  }
  return v;
}

}  // namespace embag::fuzz
