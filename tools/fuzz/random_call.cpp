#include "fuzz/random_call.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace embag::fuzz {

std::int64_t choices::below(std::int64_t n) {
  if (n <= 1) return 0;
  int bytes = 1;
  while (bytes < 8 && (std::uint64_t{1} << (8 * bytes)) < static_cast<std::uint64_t>(n)) ++bytes;
  return static_cast<std::int64_t>(take(bytes) % static_cast<std::uint64_t>(n));
}

std::int64_t choices::between(std::int64_t lo, std::int64_t hi) { return lo + below(hi - lo + 1); }

std::uint64_t seeded_choices::take(int bytes) {
  const std::uint64_t bits = generator_();
  return bytes >= 8 ? bits : bits & ((std::uint64_t{1} << (8 * bytes)) - 1);
}

std::uint64_t byte_choices::take(int bytes) {
  std::uint64_t bits = 0;
  for (int i = 0; i < bytes && size_ > 0; ++i, ++data_, --size_) bits = bits << 8 | *data_;
  return bits;
}

void call_case::copy_to_32_bits() {
  indices32.assign(indices.begin(), indices.end());
  boundaries32.assign(boundaries.begin(), boundaries.end());
}

bags call_case::batch() const {
  bags b;
  b.indices = index32 ? index_span(indices32) : index_span(indices);
  b.layout = layout;
  if (layout == bag_layout::fixed_length) b.fixed_length = fixed_length;
  else b.boundaries = boundary32 ? index_span(boundaries32) : index_span(boundaries);
  b.per_sample_weights = weights;
  return b;
}

std::int64_t call_case::num_bags() const {
  switch (layout) {
    case bag_layout::offsets: return std::ssize(boundaries) - (opts.include_last_offset ? 1 : 0);
    case bag_layout::lengths: return std::ssize(boundaries);
    case bag_layout::fixed_length: break;
  }
  return fixed_length > 0 ? std::ssize(indices) / fixed_length : 0;  // a malformed call's describe() asks too
}

std::vector<std::int64_t> call_case::bag_starts() const {
  const std::int64_t nnz = std::ssize(indices);
  std::vector<std::int64_t> starts;
  switch (layout) {
    case bag_layout::offsets:
      starts = boundaries;
      if (!opts.include_last_offset) starts.push_back(nnz);
      break;
    case bag_layout::lengths:
      starts.push_back(0);
      for (std::int64_t length : boundaries) starts.push_back(starts.back() + length);
      break;
    case bag_layout::fixed_length:
      for (std::int64_t start = 0; start <= nnz; start += fixed_length) starts.push_back(start);
      break;
  }
  if (starts.empty()) starts.push_back(0);  // include_last_offset with no offsets at all: no bags
  return starts;
}

std::int64_t call_case::padding() const {
  if (!opts.padding_idx) return -1;
  return *opts.padding_idx < 0 ? *opts.padding_idx + rows : *opts.padding_idx;
}

std::string call_case::describe() const {
  static const char* const layouts[] = {"offsets", "lengths", "fixed"};
  static const char* const prefetches[] = {"auto", "none", "l1", "l2", "l2-one-pass"};
  std::ostringstream s;
  if (seed) s << "seed=" << *seed << ' ';
  s << "R=" << rows << " D=" << dim << " stride=" << row_stride << " B=" << num_bags() << " nnz=" << indices.size()
    << " mode=" << to_string(opts.mode) << " layout=" << layouts[static_cast<int>(layout)];
  if (layout == bag_layout::fixed_length) s << ':' << fixed_length;
  s << (opts.include_last_offset ? "+last" : "") << " idx" << (index32 ? 32 : 64) << " bounds" << (boundary32 ? 32 : 64)
    << " weights=" << weights.size() << " padding=";
  if (opts.padding_idx) s << *opts.padding_idx;
  else s << "none";
  if (opts.max_norm)
    s << " max_norm=" << *opts.max_norm << " p=" << opts.norm_type
      << (opts.max_norm_mode == max_norm_flavour::clip ? " clip" : " in_place");
  s << " freq=" << opts.scale_grad_by_freq << " max_threads=" << opts.execution.max_threads
    << " prefetch=" << prefetches[static_cast<int>(opts.execution.prefetch.level)] << ':'
    << opts.execution.prefetch.rows << " out_stride=" << out_stride;
  return s.str();
}

std::mt19937 bulk_generator(choices& source) {
  return std::mt19937(static_cast<std::uint32_t>(source.below(std::int64_t{1} << 32)));
}

std::vector<float> normal_values(choices& source, std::int64_t count) {
  std::mt19937 generator = bulk_generator(source);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(count));
  for (float& x : v) x = normal(generator);
  return v;
}

namespace {

// The table's cells: normal, sometimes rounded to halves (ties for max), sometimes with NaN cells.
std::vector<float> table_values(choices& source, std::int64_t count, bool allow_nan) {
  std::vector<float> v = normal_values(source, count);
  if (source.one_in(5))
    for (float& x : v) x = std::round(x * 2.0f);
  if (allow_nan && source.one_in(10)) {
    std::mt19937 generator = bulk_generator(source);
    std::bernoulli_distribution nan_cell(0.05);
    for (float& x : v)
      if (nan_cell(generator)) x = std::numeric_limits<float>::quiet_NaN();
  }
  return v;
}

// Per-sample weights in [-1, 2), one in twenty exactly 0. A weighted mean divides by their sum: its
// weights are drawn from [0.1, 2) so the sum stays away from 0 (a near-zero divisor is tested by
// hand, and the fuzzers' extreme values reach it).
std::vector<float> weight_values(choices& source, std::int64_t count, mode m) {
  std::mt19937 generator = bulk_generator(source);
  std::uniform_real_distribution<float> weight(m == mode::mean ? 0.1f : -1.0f, 2.0f);
  std::bernoulli_distribution zero(0.05);
  std::vector<float> v(static_cast<std::size_t>(count));
  for (float& w : v) w = zero(generator) ? 0.0f : weight(generator);
  return v;
}

}  // namespace

call_case draw_call(choices& source, const call_limits& limits) {
  call_case c;
  static const std::int64_t special_dims[] = {16, 32, 64, 128, 256};  // the kernels' specialised widths
  c.dim = source.chance(2, 5) ? special_dims[source.below(5)] : source.between(1, limits.max_dim);
  c.dim = std::min(c.dim, limits.max_dim);
  c.rows = source.chance(3, 10) ? source.between(1, 4) : source.between(1, limits.max_rows);  // few rows: repeats
  c.row_stride = c.dim + (source.one_in(4) ? source.between(1, 9) : 0);
  c.table = table_values(source, c.rows * c.row_stride, limits.allow_nan);

  c.opts.mode = static_cast<mode>(source.below(5));  // sum, mean, max, none, sqrtn
  c.index32 = source.one_in(2);
  c.boundary32 = source.one_in(2);
  static const bag_layout layouts[] = {bag_layout::offsets, bag_layout::offsets, bag_layout::lengths,
                                       bag_layout::fixed_length};
  const std::int64_t layout = source.below(4);  // offsets, offsets with the last, lengths, fixed
  c.layout = layouts[layout];
  c.opts.include_last_offset = layout == 1;

  // Bag lengths: empty, single, four times the limit, or anything up to it; or one index each (the
  // kernels' own loop), sometimes but for one bag empty and another of two (a near miss).
  const std::int64_t num_bags = source.between(0, limits.max_bags);
  std::vector<std::int64_t> lengths(static_cast<std::size_t>(num_bags));
  if (c.layout == bag_layout::fixed_length) {
    c.fixed_length = source.between(1, std::max<std::int64_t>(1, limits.max_bag_length / 2));
    std::fill(lengths.begin(), lengths.end(), c.fixed_length);
  } else if (source.one_in(6)) {
    std::fill(lengths.begin(), lengths.end(), 1);
    if (num_bags >= 2 && source.one_in(2)) {
      const std::int64_t empty = source.below(num_bags), twice = (empty + 1 + source.below(num_bags - 1)) % num_bags;
      lengths[static_cast<std::size_t>(empty)] = 0;
      lengths[static_cast<std::size_t>(twice)] = 2;
    }
  } else {
    for (std::int64_t& n : lengths) {
      const std::int64_t kind = source.below(10);
      n = kind == 0   ? 0
          : kind == 1 ? 1
          : kind == 2 ? limits.max_bag_length * 4
                      : source.between(0, limits.max_bag_length);
    }
  }
  std::int64_t nnz = 0;
  if (c.layout == bag_layout::lengths) c.boundaries = lengths;
  for (std::int64_t n : lengths) {
    if (c.layout == bag_layout::offsets) c.boundaries.push_back(nnz);
    nnz += n;
  }
  if (c.opts.include_last_offset) c.boundaries.push_back(nnz);

  // Indices, sometimes from three rows of a larger table only: repeats and ties for max among
  // rows apart.
  const std::int64_t index_range = source.one_in(4) ? std::min<std::int64_t>(c.rows, 3) : c.rows;
  c.indices.resize(static_cast<std::size_t>(nnz));
  for (std::int64_t& i : c.indices) i = source.below(index_range);

  if ((c.opts.mode == mode::sum || c.opts.mode == mode::mean || c.opts.mode == mode::sqrtn) && source.one_in(2))
    c.weights = weight_values(source, nnz, c.opts.mode);
  if (source.chance(3, 10)) {
    const std::int64_t p = source.below(c.rows);
    c.opts.padding_idx = source.one_in(2) ? p : p - c.rows;
    for (std::int64_t& i : c.indices)  // make padding frequent
      if (source.one_in(5)) i = p;
  }
  if (limits.allow_max_norm && source.one_in(5)) {
    static const float norm_types[] = {1.0f, 2.0f, 3.0f, std::numeric_limits<float>::infinity()};
    c.opts.max_norm = static_cast<float>(source.between(50, 800)) / 100.0f;
    c.opts.norm_type = norm_types[source.below(4)];
    c.opts.max_norm_mode = source.chance(7, 10) ? max_norm_flavour::clip : max_norm_flavour::in_place;
  }
  c.opts.scale_grad_by_freq = source.chance(3, 10);
  c.opts.execution.max_threads = static_cast<int>(source.between(0, limits.max_threads));
  // Prefetch never changes a result: any level, any distance (past the end of the indices too).
  c.opts.execution.prefetch = {static_cast<prefetch_level>(source.below(5)),
                               static_cast<int>(source.one_in(2) ? 0 : source.between(1, 300))};
  c.out_stride = c.dim + (source.one_in(4) ? source.between(1, 5) : 0);
  c.copy_to_32_bits();
  return c;
}

call_case random_call(std::uint64_t seed, const call_limits& limits) {
  seeded_choices source(seed);
  call_case c = draw_call(source, limits);
  c.seed = seed;
  return c;
}

}  // namespace embag::fuzz
