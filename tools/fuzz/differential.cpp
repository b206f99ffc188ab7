#include "fuzz/differential.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>
#include <type_traits>

#include "embag/batched.hpp"

namespace embag::fuzz {

bags fuzz_call::batch() const {
  bags b = call.batch();
  if (null_indices) b.indices = index_span(nullptr, b.indices.size, b.indices.type);
  return b;
}

compressed_table_view fuzz_call::compressed() const {
  return {stored.data() + stored_offset, call.rows, call.dim, stored_stride, element_type};
}

namespace {

// NaN, +-Inf, a denormal, -0 or a huge value, or most often a short fraction in [-4, 4] (which may
// bring a mean's weights near a zero sum).
float special_value(choices& source) {
  switch (source.below(16)) {
    case 0: return std::numeric_limits<float>::quiet_NaN();
    case 1: return source.one_in(2) ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
    case 2: return source.one_in(2) ? 1e-40f : -1e-40f;  // denormal
    case 3: return -0.0f;
    case 4: return source.one_in(2) ? 3e38f : -3e38f;
    default: return static_cast<float>(source.between(-4096, 4096)) / 1024.0f;
  }
}

// Up to three special values at drawn places: values the tests' calls never hold (the Linear
// reference cannot follow them), on which the ISAs must still agree.
void place_special_values(choices& source, std::vector<float>& values) {
  if (values.empty()) return;
  for (std::int64_t k = source.below(4); k > 0; --k)
    values[static_cast<std::size_t>(source.below(std::ssize(values)))] = special_value(source);
}

// The table's rows in a random element type, at a random stride and misalignment: quantised when
// the rows allow it and the draw says so, else raw bytes (NaN scales, Inf halves, anything).
// Returns how the rows were made.
const char* store_rows(choices& source, fuzz_call& f) {
  const call_case& c = f.call;
  static const dtype types[] = {dtype::f16, dtype::bf16, dtype::int8_rowwise, dtype::int4_rowwise, dtype::f32};
  f.element_type = types[source.below(5)];
  const std::int64_t bytes = row_bytes(f.element_type, c.dim);
  f.stored_stride = bytes + (source.one_in(4) ? source.between(1, 9) : 0);
  f.stored_offset = source.one_in(4) ? source.between(1, 3) : 0;
  f.stored.assign(static_cast<std::size_t>(f.stored_offset + c.rows * f.stored_stride), std::byte{0});
  if (source.one_in(3)) {
    std::mt19937 generator = bulk_generator(source);
    for (std::byte& b : f.stored) b = static_cast<std::byte>(generator());
    return "bytes";
  }
  try {
    const compressed_table q = quantize(c.view(), f.element_type);
    for (std::int64_t r = 0; r < c.rows; ++r)
      std::memcpy(f.stored.data() + f.stored_offset + r * f.stored_stride, q.view().data + r * bytes,
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

// One malformation in about a third of the calls (a fault that does not apply to the call's layout
// leaves it valid). Returns its name, or "none". A fuzzer's input that ends before this choice
// reads zeros, which mean no fault: a short input is a valid call, so corpora replay valid calls.
const char* inject_fault(choices& source, fuzz_call& f) {
  if (source.chance(2, 3)) return "none";
  const fault injected = static_cast<fault>(source.below(static_cast<std::int64_t>(fault::count)));
  call_case& c = f.call;
  const std::int64_t nnz = std::ssize(c.indices);
  const std::int64_t bound_count = std::ssize(c.boundaries);
  const auto at = [&](std::int64_t n) { return static_cast<std::size_t>(source.below(n)); };
  switch (injected) {
    case fault::index_too_large:
      if (nnz > 0) c.indices[at(nnz)] = c.rows + source.below(3);
      break;
    case fault::index_negative:
      if (nnz > 0) c.indices[at(nnz)] = -1 - source.below(3);
      break;
    case fault::offsets_not_from_zero:
      if (c.layout == bag_layout::offsets && bound_count > 0) c.boundaries[0] = source.between(1, 3);
      break;
    case fault::offsets_decreasing:
      if (c.layout == bag_layout::offsets && bound_count > 1) {
        const std::size_t k = 1 + at(bound_count - 1);
        c.boundaries[k] = c.boundaries[k - 1] - 1;
      }
      break;
    case fault::offset_past_end:
      if (c.layout == bag_layout::offsets && bound_count > 0) c.boundaries.back() = nnz + 1 + source.below(3);
      break;
    case fault::last_offset_wrong:
      c.layout = bag_layout::offsets;
      c.opts.include_last_offset = true;
      c.boundaries = {0, nnz + (source.one_in(2) ? 1 : -1)};
      f.out_rows = c.opts.mode == mode::none ? nnz : 1;
      break;
    case fault::length_negative:
      if (c.layout == bag_layout::lengths && bound_count > 0) c.boundaries[at(bound_count)] = -1 - source.below(3);
      break;
    case fault::lengths_wrong_sum:
      if (c.layout == bag_layout::lengths && bound_count > 0) c.boundaries[at(bound_count)] += 1;
      break;
    case fault::weights_wrong_length:
      if (!c.weights.empty() && source.one_in(2)) c.weights.pop_back();
      else c.weights.push_back(1.0f);
      break;
    case fault::output_rows_wrong: f.out_rows += source.one_in(2) ? 1 : -1; break;
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
      f.stored_stride = row_bytes(f.element_type, c.dim) - 1;
      break;
    case fault::null_indices: f.null_indices = nnz > 0; break;
    case fault::weights_with_max_or_none:
      c.opts.mode = source.one_in(2) ? mode::max : mode::none;
      c.weights = normal_values(source, nnz);
      break;
    case fault::last_offset_without_offsets:
      c.layout = source.one_in(2) ? bag_layout::lengths : bag_layout::fixed_length;
      c.opts.include_last_offset = true;
      break;
    case fault::rows_huge: c.rows = std::numeric_limits<std::int64_t>::max() / (source.between(1, 4) * c.row_stride); break;
    case fault::count: break;
  }
  c.copy_to_32_bits();
  return fault_names[static_cast<int>(injected)];
}

}  // namespace

fuzz_call draw_fuzz_call(choices& source) {
  fuzz_call f;
  f.call = draw_call(source, fuzz_limits);
  place_special_values(source, f.call.table);
  place_special_values(source, f.call.weights);
  f.out_rows = f.call.out_rows();
  const char* stored_as = store_rows(source, f);
  const char* fault_name = inject_fault(source, f);
  f.grad_output = normal_values(source, std::max<std::int64_t>(f.out_rows, 0) * f.call.dim);
  place_special_values(source, f.grad_output);

  std::ostringstream s;
  s << f.call.describe() << " out_rows=" << f.out_rows << " stored=" << to_string(f.element_type) << ':' << stored_as
    << '+' << f.stored_offset << ':' << f.stored_stride << " fault=" << fault_name;
  f.recipe = s.str();
  return f;
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
std::int64_t real_rows(const call_case& c) { return static_cast<std::int64_t>(c.table.size()) / std::max<std::int64_t>(c.row_stride, 1); }

constexpr float canary = -12345.5f;
constexpr std::int64_t int_canary = -7;

// The bag of each index, for a call validation accepted.
std::vector<std::int64_t> bag_of_index(const call_case& c) {
  const std::vector<std::int64_t> starts = c.bag_starts();
  std::vector<std::int64_t> bag(static_cast<std::size_t>(starts.back()));
  for (std::size_t b = 0; b + 1 < starts.size(); ++b)
    for (std::int64_t j = starts[b]; j < starts[b + 1]; ++j) bag[static_cast<std::size_t>(j)] = static_cast<std::int64_t>(b);
  return bag;
}

// The per-sample-weights gradient is a dot product whose lane order differs between ISAs: each
// value may differ from the reference's by rounding, on the scale of the magnitudes it sums.
std::optional<std::string> weights_grad_difference(const call_case& c, const matrix_view<const float>& grad_output,
                                                   const std::vector<float>& want, const std::vector<float>& got) {
  if (want.size() != got.size()) return first_difference("weights_grad", want, got);
  const std::vector<std::int64_t> bag = bag_of_index(c);
  const auto norm = [](const float* v, std::int64_t n) {
    double s = 0;
    for (std::int64_t d = 0; d < n; ++d) s += double(v[d]) * v[d];
    return std::sqrt(s);
  };
  const std::int64_t stride = c.row_stride == 0 ? c.dim : c.row_stride;  // 0 means dense rows
  const auto row = [&](std::size_t j) { return c.table.data() + c.indices[j] * stride; };
  // per bag: sum |w_i| |x_i|, the largest |x_i| and the divisor's sums, for the second term of a
  // scaled bag (mean, sqrtn)
  std::vector<double> weighted_norms(static_cast<std::size_t>(std::max<std::int64_t>(grad_output.rows, 0)) + 1, 0.0);
  std::vector<double> largest_norms(weighted_norms.size(), 0.0);
  std::vector<float> weight_sums(weighted_norms.size(), 0.0f);  // as the library sums them: float, in order
  std::vector<float> weight_square_sums(weighted_norms.size(), 0.0f);
  for (std::size_t j = 0; j < want.size(); ++j) {
    if (c.indices[j] == c.padding()) continue;
    const std::size_t b = static_cast<std::size_t>(bag[j]);
    weighted_norms[b] += std::abs(double(c.weights[j])) * norm(row(j), c.dim);
    largest_norms[b] = std::max(largest_norms[b], norm(row(j), c.dim));
    weight_sums[b] += c.weights[j];
    weight_square_sums[b] += c.weights[j] * c.weights[j];
  }
  for (std::size_t j = 0; j < want.size(); ++j) {
    if (same_value(want[j], got[j])) continue;
    const std::size_t b = static_cast<std::size_t>(bag[j]);
    const double dy = norm(grad_output.data + b * c.dim, c.dim);
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

options on(const call_case& c, isa which) {
  options o = c.opts;
  o.execution.isa = which;
  return o;
}

// The lambdas read the call's buffers through views (batch, compressed, dy): `f` outlives them.
std::vector<entry_point> entry_points(const fuzz_call& f, operation op) {
  const call_case& c = f.call;
  const bags batch = f.batch();
  const compressed_table_view compressed = f.compressed();
  const std::int64_t out_rows = f.out_rows;
  const std::int64_t rows_held = real_rows(c);
  const std::int64_t out_cells = safe_size(out_rows, std::max(c.out_stride, c.dim));
  const std::int64_t argmax_cells = c.opts.mode == mode::max ? safe_size(out_rows, c.dim) : 0;
  const matrix_view<const float> dy{f.grad_output.data(), out_rows, c.dim, c.dim};
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
                          forward(c.view(), batch, on(c, which),
                                  {o.floats.data(), out_rows, c.dim, c.out_stride}, o.ints);
                        });
                        return o;
                      },
                      unchanged, exact});
    points.push_back({"forward (compressed table)",
                      [=](isa which) {
                        outcome o{{}, {}, canaries(out_cells), std::vector<std::int64_t>(argmax_cells, int_canary), {}};
                        attempt(o, [&] {
                          forward(compressed, batch, on(c, which), {o.floats.data(), out_rows, c.dim, c.out_stride},
                                  o.ints);
                        });
                        return o;
                      },
                      unchanged, exact});
    points.push_back({"forward (mutable table)",
                      [=](isa which) {
                        outcome o{{}, {}, canaries(out_cells), std::vector<std::int64_t>(argmax_cells, int_canary), c.table};
                        attempt(o, [&] {
                          forward(table_view<float>{o.table.data(), c.rows, c.dim, c.row_stride}, batch, on(c, which),
                                  {o.floats.data(), out_rows, c.dim, c.out_stride}, o.ints);
                        });
                        return o;
                      },
                      unchanged, exact});
    // the call's execution becomes the batch's; its table and bags twice, into two outputs
    points.push_back({"forward_batched (the call twice)",
                      [=](isa which) {
                        outcome o{{}, {}, canaries(2 * out_cells), {}, {}};
                        attempt(o, [&] {
                          options per_table = c.opts;
                          execution how = per_table.execution;
                          how.isa = which;
                          per_table.execution = {};
                          const table_lookup lookups[] = {
                              {compressed, batch, per_table, {o.floats.data(), out_rows, c.dim, c.out_stride}},
                              {compressed, batch, per_table, {o.floats.data() + out_cells, out_rows, c.dim, c.out_stride}}};
                          forward_batched(lookups, how);
                        });
                        return o;
                      },
                      unchanged, exact});
    // index policy skip: indices out of range (a malformed call's) read nothing; the report joins
    // the compared integers after argmax
    points.push_back({"forward (bad indices skipped)",
                      [=](isa which) {
                        outcome o{{}, {}, canaries(out_cells), std::vector<std::int64_t>(argmax_cells, int_canary), {}};
                        index_report report{int_canary, int_canary, int_canary, int_canary};
                        attempt(o, [&] {
                          options opts = on(c, which);
                          opts.bad_indices = bad_index_policy::skip;
                          opts.report = &report;
                          if (opts.max_norm_mode == max_norm_flavour::in_place) opts.max_norm_mode = max_norm_flavour::clip;
                          forward(c.view(), batch, opts, {o.floats.data(), out_rows, c.dim, c.out_stride},
                                  std::span<std::int64_t>(o.ints));
                        });
                        o.ints.insert(o.ints.end(), {report.skipped, report.first_position, report.first_value, report.pruned});
                        return o;
                      },
                      unchanged, exact});
    // a 16-bit output (fp16 or bf16, by the call's seed), its bits compared as floats
    points.push_back({"forward_batched (a 16-bit output)",
                      [=](isa which) {
                        outcome o;
                        constexpr std::uint16_t half_canary = 0xbeef;
                        std::vector<std::uint16_t> halves(static_cast<std::size_t>(out_cells), half_canary);
                        const dtype type = c.out_stride % 2 == 0 ? dtype::f16 : dtype::bf16;
                        attempt(o, [&] {
                          options per_table = c.opts;
                          execution how = per_table.execution;
                          how.isa = which;
                          per_table.execution = {};
                          const table_lookup one{compressed, batch, per_table,
                                                 {halves.data(), out_rows, c.dim, c.out_stride, type}};
                          forward_batched({&one, 1}, how);
                        });
                        // a NaN's sign and payload are the fp32 sum's, which no source order pins down
                        // (same_value): any NaN half is read as NaN
                        const std::uint16_t exponent = type == dtype::f16 ? 0x7c00 : 0x7f80;
                        const auto is_nan = [&](std::uint16_t h) { return (h & exponent) == exponent && (h & ~exponent & 0x7fff) != 0; };
                        for (const std::uint16_t h : halves)
                          o.floats.push_back(o.code ? (h == half_canary ? canary : 0.0f)
                                                    : is_nan(h) ? std::numeric_limits<float>::quiet_NaN() : float(h));
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
      forward(c.view(), batch, on(c, isa::reference),
              {out.data(), out_rows, c.dim, c.out_stride}, argmax);
    } catch (const error&) {
    }
  }
  const std::int64_t grad_cells = safe_size(std::min(c.rows, rows_held), c.dim);
  points.push_back({"backward_dense",
                    [=](isa which) {
                      outcome o;
                      o.floats.resize(static_cast<std::size_t>(grad_cells));
                      for (std::size_t i = 0; i < o.floats.size(); ++i) o.floats[i] = static_cast<float>(int(i % 5) - 2);
                      attempt(o, [&] { backward_dense(batch, on(c, which), dy, {o.floats.data(), c.rows, c.dim, c.dim}, argmax); });
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
                      attempt(o, [&] { backward_sparse(c.rows, batch, on(c, which), dy, g, argmax); });
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
                          per_sample_weights_grad(c.view(),
                                                  batch, on(c, which), dy, o.floats);
                        });
                        return o;
                      },
                      unchanged,
                      [=](const outcome& want, const outcome& got) { return weights_grad_difference(c, dy, want.floats, got.floats); }});
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
