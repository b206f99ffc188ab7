#include "plan.hpp"

#include "allocation.hpp"
#include "formats/formats.hpp"
#include "parallel.hpp"
#include "workspace.hpp"

#include <algorithm>
#include <bit>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace embag::detail {

float max_norm_scale(const float* row, std::int64_t dim, float max_norm, float norm_type) noexcept {
  double norm = 0.0;
  if (norm_type == 2.0f) {
    for (std::int64_t d = 0; d < dim; ++d) norm += double(row[d]) * double(row[d]);
    norm = std::sqrt(norm);
  } else if (norm_type == 1.0f) {
    for (std::int64_t d = 0; d < dim; ++d) norm += std::fabs(double(row[d]));
  } else if (std::isinf(norm_type)) {
    for (std::int64_t d = 0; d < dim; ++d) norm = std::max(norm, std::fabs(double(row[d])));
  } else {
    for (std::int64_t d = 0; d < dim; ++d) norm += std::pow(std::fabs(double(row[d])), double(norm_type));
    norm = std::pow(norm, 1.0 / double(norm_type));
  }
  if (!(norm > double(max_norm))) return 1.0f;
  return static_cast<float>(double(max_norm) / (norm + 1e-7));
}

namespace {

// Work below this many floats per block is not worth a task (about 10 us of row reads).
constexpr std::int64_t min_block_work = 32 * 1024;

// A call is split over threads only when each would get at least this many floats of work
// (1 MiB of rows read and written) while the workers sleep: below it, waking them cost more than
// they saved (tens of microseconds on these VMs; 2,048 one-index bags of D = 64 took 0.046 ms on
// two threads against 0.035 inline, a millisecond after the last call). While they linger after a
// threaded call (parallel.hpp), a block's worth is enough: split so, the same bags took 0.020 ms
// on two threads against 0.040 inline right after a sparse backward, and 1,024 bags 0.008 against
// 0.014 back to back (a C++ loop of such calls, R = 1M, medians of 2,000; the driver is in this
// change's closing note). EMBAG_MIN_THREAD_FLOATS overrides the first, read once.
std::int64_t min_thread_work() {
  static const std::int64_t floats = [] {
    const char* env = std::getenv("EMBAG_MIN_THREAD_FLOATS");
    const long long v = env != nullptr ? std::atoll(env) : 0;
    return v > 0 ? static_cast<std::int64_t>(v) : std::int64_t{256} * 1024;
  }();
  return workers_lingering() ? std::min(floats, min_block_work) : floats;
}

// The threads work is worth, of `threads`. A call run inline only because the workers sleep (it
// would split were they awake) asks its run_blocks to wake them: the next such call, back to back,
// then finds them lingering instead of running inline again. A loop of 2,048 one-index bags of D =
// 64 never split before (0.032 ms a call on two threads, as on one).
int threads_worth(std::int64_t work, int threads) {
  if (threads <= 1) return 1;
  const int worth = static_cast<int>(std::clamp<std::int64_t>(work / min_thread_work(), 1, threads));
  if (worth == 1 && work >= 2 * min_block_work) request_warm_workers();
  return worth;
}

int block_count(std::int64_t work, int threads) {
  threads = threads_worth(work, threads);
  if (threads == 1) return 1;
  const std::int64_t wanted = std::min<std::int64_t>(std::int64_t{threads} * 8, max_blocks);
  return static_cast<int>(std::clamp<std::int64_t>(work / min_block_work, 1, wanted));
}

}  // namespace

void plan_even_blocks(std::int64_t items, std::int64_t work_per_item, int threads, range_blocks& out) {
  out.count = 0;
  const int k = block_count(items * work_per_item, threads);
  for (int i = 0; i < k; ++i) {
    const std::int64_t begin = items * i / k, end = items * (i + 1) / k;
    if (end > begin) out.blocks[out.count++] = {begin, end};
  }
}

namespace {

// A forward's work: rows read plus rows written (for mode none, one per index), times dim.
std::int64_t forward_work(const bag_source& bags, pooling pool, std::int64_t dim) {
  return (pool == pooling::lookup ? 2 * bags.nnz : bags.nnz + bags.num_bags) * dim;
}

// Cuts the bags (or, for mode none, the indices: each its own "bag", bag_begin == index_begin)
// into at most k blocks of about equal work, handing each to emit in order.
template <class Emit>
void cut_forward_blocks(const bag_source& bags, pooling pool, int k, Emit&& emit) {
  if (pool == pooling::lookup || bags.one_index_each) {  // bag b is index b: cut the indices evenly
    for (int i = 0; i < k; ++i) {
      const std::int64_t begin = bags.nnz * i / k, end = bags.nnz * (i + 1) / k;
      if (end > begin) emit(bag_block{begin, end, begin});
    }
    return;
  }
  if (k == 1) {
    if (bags.num_bags > 0) emit(bag_block{0, bags.num_bags, 0});
    return;
  }
  const std::int64_t total = bags.nnz + bags.num_bags;  // rows read + rows written
  if (bags.layout == bag_layout::offsets) {
    // The work done up to bag b's end, end_of_bag(b) + b + 1, grows with b: each cut is the first
    // bag that reaches its share, found by bisection, not by a walk over every bag (a sparse
    // gradient's forward has one bag per unique row: 78k for R = 1M, B x L = 2,048 x 40).
    std::int64_t block_bag = 0, block_index = 0;
    for (std::int64_t cut = 0; cut < k && block_bag < bags.num_bags; ++cut) {
      std::int64_t low = block_bag, high = bags.num_bags - 1;
      while (low < high) {
        const std::int64_t mid = low + (high - low) / 2;
        if ((end_of_bag(bags, mid, 0) + mid + 1) * k >= total * (cut + 1)) high = mid;
        else low = mid + 1;
      }
      emit(bag_block{block_bag, low + 1, block_index});
      block_bag = low + 1;
      block_index = end_of_bag(bags, low, 0);
    }
    return;
  }
  std::int64_t start = 0, done = 0, block_bag = 0, block_index = 0, cut = 0;
  for (std::int64_t b = 0; b < bags.num_bags; ++b) {
    const std::int64_t end = end_of_bag(bags, b, start);
    done += end - start + 1;
    start = end;
    // cut after bag b once this block's share of the total is reached
    if (done * k >= total * (cut + 1) || b + 1 == bags.num_bags) {
      emit(bag_block{block_bag, b + 1, block_index});
      ++cut;
      block_bag = b + 1;
      block_index = end;
    }
  }
}

}  // namespace

void plan_forward_blocks(const bag_source& bags, pooling pool, std::int64_t dim, int threads,
                         bag_blocks& out) {
  out.count = 0;
  cut_forward_blocks(bags, pool, block_count(forward_work(bags, pool, dim), threads),
                     [&](const bag_block& b) { out.blocks[out.count++] = b; });
}

bag_block take_front(const bag_source& bags, pooling pool, bag_block& rest, std::int64_t most) {
  const std::int64_t end = std::min(rest.bag_end, rest.bag_begin + most);
  std::int64_t index_end = end;  // mode none, or one index each: a bag is its index
  if (pool != pooling::lookup && !bags.one_index_each) {
    index_end = rest.index_begin;
    for (std::int64_t b = rest.bag_begin; b < end; ++b) index_end = end_of_bag(bags, b, index_end);
  }
  const bag_block front{rest.bag_begin, end, rest.index_begin};
  rest = {end, rest.bag_end, index_end};
  return front;
}

int plan_batched_forward_blocks(std::span<const forward_request> tables, int threads, std::vector<table_block>& out) {
  out.clear();
  reserved(out, tables.size() + max_blocks, "the blocks of a batched forward");  // the most cut below
  std::int64_t total = 0;
  for (const forward_request& r : tables) total += forward_work(r.bags, r.reduce.pool, r.dim);
  const int k = block_count(total, threads);
  for (std::size_t t = 0; t < tables.size(); ++t) {
    const forward_request& r = tables[t];
    const double share = total == 0 ? 1.0 : std::ceil(double(forward_work(r.bags, r.reduce.pool, r.dim)) * k / double(total));
    cut_forward_blocks(r.bags, r.reduce.pool, static_cast<int>(std::clamp(share, 1.0, double(max_blocks))),
                       [&](const bag_block& b) { out.push_back({static_cast<std::int64_t>(t), b}); });
  }
  return k == 1 ? 1 : threads;
}

void plan_row_ranges(std::int64_t rows, std::int64_t work, int threads, range_blocks& out) {
  out.count = 0;
  // one range per thread: every range reads the whole index stream
  const int k = threads_worth(work, threads);
  for (int i = 0; i < k; ++i) {
    const std::int64_t begin = rows * i / k, end = rows * (i + 1) / k;
    if (end > begin) out.blocks[out.count++] = {begin, end};
  }
}

void plan_row_blocks(const row_transpose& t, std::int64_t dim, int threads, range_blocks& out) {
  out.count = 0;
  const std::int64_t total = t.segment_begin[t.num_unique] + t.num_unique;  // contributions + rows
  const int k = block_count(total * dim, threads);
  std::int64_t done = 0, first = 0;
  for (std::int64_t u = 0; u < t.num_unique; ++u) {
    done += t.segment_begin[u + 1] - t.segment_begin[u] + 1;
    if (done * k >= total * (out.count + 1) || u + 1 == t.num_unique) {
      out.blocks[out.count++] = {first, u + 1};
      first = u + 1;
    }
  }
}

namespace {

// EMBAG_PREFETCH=none|l1:N|l2:N|l2-one-pass:N, read once: how a user tunes without recompiling.
prefetch_setting prefetch_from_environment() {
  const char* env = std::getenv("EMBAG_PREFETCH");
  if (env == nullptr || *env == '\0') return {};
  const std::string text(env);
  if (text == "none") return {prefetch_level::none, 0};
  for (const auto& [prefix, level] : {std::pair{"l1:", prefetch_level::l1}, std::pair{"l2:", prefetch_level::l2},
                                      std::pair{"l2-one-pass:", prefetch_level::l2_one_pass}}) {
    const std::string_view p(prefix);
    if (text.size() > p.size() && text.rfind(p, 0) == 0)
      return {level, std::clamp(std::atoi(text.c_str() + p.size()), 1, 1024)};
  }
  return {};
}

// What the caller asks for, or else what EMBAG_PREFETCH says.
const prefetch_setting& asked_or_environment(const prefetch_setting& asked) {
  static const prefetch_setting from_environment = prefetch_from_environment();
  return asked.level != prefetch_level::automatic ? asked : from_environment;
}

// A forced level as the kernels take it: l2_one_pass is l2 without narrow passes.
prefetch_level kernel_level(prefetch_level forced) noexcept {
  return forced == prefetch_level::l2_one_pass ? prefetch_level::l2 : forced;
}

// Whether a few hot rows take much of the call (real recommender traffic, Zipf-like), from a sample
// of 128 indices spread over it: with uniform indices into a table of R rows, the sample repeats a
// row about 128^2 / 2R times (under 1 for the tables this decides, past the LLC); with Zipf(1.05)
// indices into a million rows, most of the sample repeats the hottest rows. A 16th of the sample
// repeating is the line between. Costs about a microsecond, on calls of at least 4 samples' worth.
bool skewed(const bag_source& bags) {
  constexpr std::int64_t sample = 128;
  if (bags.nnz < 4 * sample) return false;
  std::array<std::int64_t, sample> rows{};
  for (std::int64_t i = 0; i < sample; ++i) rows[i] = element_at(bags.indices, bags.index_kind, i * (bags.nnz / sample));
  std::sort(rows.begin(), rows.end());
  std::int64_t repeats = 0;
  for (std::int64_t i = 1; i < sample; ++i) repeats += rows[i] == rows[i - 1];
  return repeats >= sample / 16;
}

}  // namespace

int prefetch_trials::next(bool& on_trial) noexcept {
  const int decided = chosen();
  on_trial = decided < 0;
  if (!on_trial) return decided;
  const int call = handed_out_.fetch_add(1, std::memory_order_relaxed);
  return call < warm_up_calls ? 0 : (call - warm_up_calls) % candidates_;
}

void prefetch_trials::report(int candidate, double seconds_per_byte) noexcept {
  const std::lock_guard<std::mutex> lock(mutex_);
  if (warm_up_reports_ < warm_up_calls) {  // the warm-up's (or, with calls on several threads, about them)
    ++warm_up_reports_;
    return;
  }
  if (chosen() >= 0 || reported_[candidate] == trials) return;
  seconds_per_byte_[candidate][reported_[candidate]++] = seconds_per_byte;
  int best = 0;
  double best_median = 0.0;
  for (int c = 0; c < candidates_; ++c) {
    if (reported_[c] < trials) return;
    double* times = seconds_per_byte_[c];
    std::nth_element(times, times + trials / 2, times + trials);
    const double median = times[trials / 2];
    if (c == 0 || median < best_median) {
      best = c;
      best_median = median;
    }
  }
  chosen_.store(best, std::memory_order_release);
}

namespace {

// The tables past half of L2: trials per table size (up to 2x L2, up to 8x, larger within the LLC
// or read with skew, past the LLC at random: where the rows come from, and so how far ahead and
// into which cache to fetch them), per row size (its cache lines rounded up to a power of two, 1 to
// 32 or more), per bag length (under 4 indices per bag, or more) and for max apart from the sums,
// since what wins on one loses on another: on a 1.3 MB table (R = 10k, D = 64) no prefetch was the
// sums' best and took the max 1.2x the time of prefetching into L1 (`EMBAG_PREFETCH=none|l1:16
// embag bench --rows 10000 --dim 64 --mode sum,max`: sum 0.349 | 0.386 ms, max 0.458 | 0.385);
// a process whose first calls read 128-byte rows chose for 256-byte rows a candidate 2x slower
// than the best; narrow passes, the best on bags of 40, took 1.5x the time of one pass
// into L1 on bags of one (`embag bench --rows 4000000 --dim 64 --pooling 1`); on tables within the
// LLC, where L1 had been the fixed choice, narrow passes took 0.63x its time (`embag bench --rows
// 32768 --dim 128 --mode sum`: 0.88 ms against 1.39) and 0.44x at D = 32 (`--rows 131072 --dim 32`:
// 0.37 against 0.84); and a winner learnt on a 1.3 MB table, mostly in L2, lost 2x on a 13 MB one
// (the FBGEMM harness's R = 10k and 100k, D = 32). No prefetch at all is a candidate in every class: a table
// that mostly stays in L2 pays for the prefetches and gains nothing (FBGEMM's harness at R = 10k, D
// = 32 on a Xeon with 2 MiB of L2: `EMBAG_PREFETCH=none embag bench --rows 10000 --dim 32 --mode
// sum` 0.160 ms, the l1 / l2 / l2-one-pass candidates 0.169 / 0.192 / 0.191), and past the LLC
// one-index bags read fastest without: their rows are independent loads the out-of-order window
// keeps in flight by itself, where prefetches only took issue slots and fill buffers (R = 1M, D =
// 128, `EMBAG_PREFETCH=none|l1:16|l1:8 embag bench --pooling 1 --mode sum --isa avx512`, five runs
// each: 0.086-0.090 | 0.092-0.100 | 0.093-0.103 ms on 1 thread, 0.038-0.040 | 0.041-0.048 |
// 0.041-0.048 on 2); on bags of 40 it costs its trials (none 5.2 ms, narrow passes 4.2-4.4).
// Element types learn apart too: rows of 8-bit codes do
// more work per byte, and on a 72 MB int8 table (R = 1M, D = 64, 72-byte rows, the row size class
// of 128-byte fp32 rows) into L1 took 1.9x the time of into L2 in one pass, where on the fp32
// table of D = 32 that had decided for both the candidates were within 5% (FBGEMM's harness,
// `EMBAG_PREFETCH=l1|l2-one-pass`, `--rows=1000000 --dims=32,64`: 2.37 against 1.26 ms).
// How far ahead is learnt with the level (bytes of rows in flight, not rows: a long row needs
// fewer rows ahead to keep as many misses pending). Into L1 8 KiB ahead, tuned on the Xeon, was
// the only distance into L1 until the Zen 3 guest (32 KiB L1d, 512 KiB L2), where 4 KiB ahead
// took 0.93x its time at D = 64 and 0.96x at D = 32 but 1.04x on Zipf ids and 1.05x on bags of 4
// (`build/bench/prefetch_sweep --dim 64` and `--dim 32`, `--dim 64 --zipf`, `--dim 64 --pooling
// 4`: l1:16 against l1:32; at D = 32 l1:32 against l1:64). FBGEMM's harness (`side_by_side.sh
// FBGEMM quick`, its ideal loop ported to AVX2; the two builds one after the other) moved within
// its noise: embag behind in 170 of 252 cells against 180, median 0.88x of FBGEMM against 0.86.
// Into L2 in one pass read as into L1 at the same distance there. The first candidate serves the
// calls too short to time while no winner is known. Narrow passes run as one pass on the widths
// where they would group a row's columns the same (the kernels' narrow_passes_differ: every
// width on SSE2, short rows): that candidate then times the one-pass code a second time.
struct prefetch_candidate {
  prefetch_level level;
  bool narrow;
  std::int64_t in_flight;
};
constexpr std::int64_t l1_in_flight = 8 * 1024, l2_in_flight = 32 * 1024;  // a forced level's too
constexpr prefetch_candidate prefetch_candidates[] = {{prefetch_level::l1, false, l1_in_flight},
                                                      {prefetch_level::l1, false, l1_in_flight / 2},
                                                      {prefetch_level::l2, false, l2_in_flight},
                                                      {prefetch_level::l2, true, l2_in_flight},
                                                      {prefetch_level::none, false, 0}};
constexpr int prefetch_candidate_count = std::ssize(prefetch_candidates);
constexpr int table_classes = 4;
constexpr int past_llc_class = table_classes - 1;
constexpr int row_size_classes = 6;
constexpr std::int64_t short_bag_indices = 4;
template <int Candidates>
struct learnt_prefetch : prefetch_trials {
  static_assert(Candidates <= max_candidates, "prefetch_trials keeps the times of max_candidates");
  learnt_prefetch() noexcept : prefetch_trials(Candidates) {}
};
constexpr int element_classes = 4;  // 32, 16, 8 or 4 bits
// max or not, short bags or not, row size, element size
constexpr int sets_per_class = 2 * 2 * row_size_classes * element_classes;
learnt_prefetch<prefetch_candidate_count> trial_sets[table_classes * sets_per_class];
prefetch_trials& trial_set(int set) noexcept { return trial_sets[set]; }

// table_bytes > half_l2; past_llc: past the LLC and read without skew.
int trial_set_of(const forward_request& req, std::int64_t table_bytes, std::int64_t half_l2, bool past_llc) {
  const auto halves_of_l2 = static_cast<std::uint64_t>(table_bytes / half_l2);  // >= 1
  const int table_class = past_llc ? past_llc_class : std::min((static_cast<int>(std::bit_width(halves_of_l2)) - 1) / 2, past_llc_class - 1);
  const auto lines = static_cast<std::uint64_t>((req.row_bytes + 63) / 64);
  // a lookup (mode none) writes a row per index, as bags of one index do: one bag of all the
  // indices (embag.nn.Embedding's) had learnt with the bags of 40
  const bool short_bags = req.reduce.pool == pooling::lookup || req.bags.nnz < short_bag_indices * req.bags.num_bags;
  const int row_size = std::min(static_cast<int>(std::bit_width(lines - 1)), row_size_classes - 1);
  const bool max = req.reduce.pool == pooling::max;
  const int element = std::countr_zero(static_cast<unsigned>(32 / format_of(req.element_type)->element_bits));  // 0 to 3
  return table_class * sets_per_class + ((int{max} * 2 + int{short_bags}) * row_size_classes + row_size) * element_classes + element;
}

// A call too short to time well does not count as a trial: it takes the current leader. A
// quarter of a MiB from DRAM takes about 10 microseconds here, a thousand times the clock's grain.
constexpr std::int64_t min_trial_bytes = std::int64_t{1} << 18;

// The rows ahead that keep `in_flight` bytes of rows pending, within 4 and 64.
int rows_ahead(std::int64_t in_flight, std::int64_t row_bytes) {
  return static_cast<int>(std::clamp<std::int64_t>(in_flight / row_bytes, 4, 64));
}

// How far ahead a forced level, and the scatter's (never on trial), prefetch.
std::int64_t default_in_flight(prefetch_level level) { return level == prefetch_level::l2 ? l2_in_flight : l1_in_flight; }

}  // namespace

void choose_prefetch(forward_request& req, const prefetch_setting& asked, bool may_trial) {
  const std::int64_t l2 = caches().l2 > 0 ? caches().l2 : std::int64_t{1} << 20;
  const std::int64_t llc = caches().llc > 0 ? caches().llc : std::int64_t{32} << 20;
  const std::int64_t row_bytes = req.row_bytes;
  // the table's extent, as validation bounded it (rows * row_stride could overflow)
  const std::int64_t table_bytes = req.rows == 0 ? 0 : (req.rows - 1) * req.row_stride + row_bytes;
  const prefetch_setting& setting = asked_or_environment(asked);

  // By size class: a table within half of L2 needs no prefetch; a larger one the fastest of the
  // candidates on this machine (prefetch_trials), learnt per table size class. Skewed indices on a
  // table past the LLC read mostly hot rows the caches keep: served as the largest class within it.
  prefetch_candidate chosen = table_bytes <= l2 / 2 ? prefetch_candidate{prefetch_level::none, false, 0} : prefetch_candidates[0];
  req.prefetch_trial = req.prefetch_trial_set = -1;
  if (chosen.level != prefetch_level::none && setting.level == prefetch_level::automatic) {
    bool on_trial = false;
    const bool long_enough = may_trial && req.bags.nnz * row_bytes >= min_trial_bytes;
    const int set = trial_set_of(req, table_bytes, l2 / 2, table_bytes > llc && !skewed(req.bags));
    prefetch_trials& trials = trial_set(set);
    const int candidate = long_enough ? trials.next(on_trial) : std::max(trials.chosen(), 0);
    chosen = prefetch_candidates[candidate];
    if (on_trial) {
      req.prefetch_trial = candidate;
      req.prefetch_trial_set = set;
    }
  }
  if (setting.level != prefetch_level::automatic) {
    const prefetch_level level = kernel_level(setting.level);
    // a forced l2 reads in narrow passes, as it always did
    chosen = {level, setting.level == prefetch_level::l2, default_in_flight(level)};
  }
  req.prefetch = chosen.level;
  req.prefetch_rows = setting.rows > 0 ? setting.rows : rows_ahead(chosen.in_flight, row_bytes);
  req.narrow_passes = chosen.narrow;
}

void choose_scatter_prefetch(backward_request& r, const prefetch_setting& asked) {
  const prefetch_setting& setting = asked_or_environment(asked);
  const std::int64_t row_bytes = r.dim * static_cast<std::int64_t>(sizeof(float));
  // the gradient rows' size class, as forward's for its table: none within half of L2
  const std::int64_t l2 = caches().l2 > 0 ? caches().l2 : std::int64_t{1} << 20;
  prefetch_level level = r.rows * row_bytes <= l2 / 2 ? prefetch_level::none : prefetch_level::l1;
  if (setting.level != prefetch_level::automatic) level = kernel_level(setting.level);  // the scatter has no passes
  r.prefetch = level;
  r.prefetch_rows = setting.rows > 0 ? setting.rows : rows_ahead(default_in_flight(level), row_bytes);
}

void report_prefetch_trial(const forward_request& req, double seconds) noexcept {
  if (req.prefetch_trial < 0) return;
  const double bytes = static_cast<double>(req.bags.nnz) * static_cast<double>(req.row_bytes);
  trial_set(req.prefetch_trial_set).report(req.prefetch_trial, seconds / bytes);
}

namespace {
constexpr update_fetch update_fetch_candidates[] = {update_fetch::demand_loads, update_fetch::prefetch_next_chunk};
// One set per optimizer and per gradient source (computed from dY in the step, or read from a
// given sparse gradient): each does its own work per row it brings in, so each can overlap more or
// less of the rows' misses.
constexpr int gradient_sources = 2;
learnt_prefetch<std::ssize(update_fetch_candidates)> update_fetch_sets[3 * gradient_sources];
int update_fetch_set_of(const update_request& q) noexcept {
  return static_cast<int>(q.kind) * gradient_sources + int{q.given_gradient == nullptr};
}
}  // namespace

update_fetch_trial choose_update_fetch(std::span<update_request> tables, const prefetch_setting& asked, bool may_trial) {
  const prefetch_setting& setting = asked_or_environment(asked);
  update_fetch_trial trial;
  const auto fetch_for_all = [&](update_fetch fetch) {
    for (update_request& q : tables) q.fetch = q.gradient.prefetch == prefetch_level::none ? update_fetch::none : fetch;
    return trial;
  };
  switch (setting.level) {
    case prefetch_level::none: return fetch_for_all(update_fetch::none);
    case prefetch_level::l1: return fetch_for_all(update_fetch::demand_loads);
    case prefetch_level::l2:
    case prefetch_level::l2_one_pass: return fetch_for_all(update_fetch::prefetch_next_chunk);
    case prefetch_level::automatic: break;
  }
  if (tables.empty()) return trial;
  // A batched call learns in its first table's set, and only when every table shares it.
  const int set = update_fetch_set_of(tables.front());
  bool one_set = true;
  for (const update_request& q : tables) {
    one_set = one_set && update_fetch_set_of(q) == set;
    if (q.gradient.prefetch != prefetch_level::none) trial.bytes += q.gradient.transpose.num_unique * update_row_bytes(q);
  }
  prefetch_trials& trials = update_fetch_sets[set];
  if (!may_trial || !one_set || trial.bytes < min_trial_bytes)
    return fetch_for_all(update_fetch_candidates[std::max(trials.chosen(), 0)]);
  bool on_trial = false;
  const int candidate = trials.next(on_trial);
  if (on_trial) {
    trial.set = set;
    trial.candidate = candidate;
  }
  return fetch_for_all(update_fetch_candidates[candidate]);
}

void report_update_fetch_trial(const update_fetch_trial& trial, double seconds) noexcept {
  if (trial.candidate >= 0) update_fetch_sets[trial.set].report(trial.candidate, seconds / static_cast<double>(trial.bytes));
}

namespace {

// Splits [0, n) into `chunks` nearly equal runs; chunk c is [n * c / chunks, n * (c + 1) / chunks).
// Loops take both ends as locals: a bound recomputed in the loop condition was divided again after
// every store through an int64 pointer, which may alias the n it reads (half of a histogram pass's
// time went to that division, `perf annotate`).
struct chunk_range {
  std::int64_t begin, end;
};
chunk_range chunk_of(std::int64_t n, int chunks, std::int64_t c) { return {n * c / chunks, n * (c + 1) / chunks}; }

// A transpose's sort entry: a position's row and its tag (the position, or its bag when the
// kernels need nothing else), as one word, row << tag_bits | tag, when both fit: a third of the
// bytes that three arrays (row, position, bag) moved in every pass of the sort.
struct packed_entry {
  using type = std::uint64_t;
  int tag_bits = 0;
  type make(std::int64_t row, std::int64_t tag) const { return static_cast<type>(row) << tag_bits | static_cast<type>(tag); }
  std::int64_t row(type e) const { return static_cast<std::int64_t>(e >> tag_bits); }
  std::int64_t tag(type e) const { return static_cast<std::int64_t>(e & ((type{1} << tag_bits) - 1)); }
  // the row's bits from `shift` on, in one shift of the word (row(e) >> shift took two variable
  // shifts per entry in each radix pass: a fifth of the passes' time)
  std::uint64_t row_from(type e, int shift) const { return e >> (tag_bits + shift); }
};

// ... and as two words when they do not.
struct wide_entry {
  using type = row_and_position;
  type make(std::int64_t row, std::int64_t tag) const { return {row, tag}; }
  std::int64_t row(type e) const { return e.row; }
  std::int64_t tag(type e) const { return e.position; }
  std::uint64_t row_from(type e, int shift) const { return static_cast<std::uint64_t>(e.row) >> shift; }
};

// How far ahead the sort's scatter prefetches the line an entry will be written to.
inline constexpr std::int64_t scatter_ahead = 16;  // entries

// Sorts the non-padding positions by row into buffers.bags (each position's bag),
// buffers.unique_rows and buffers.segment_begin, and buffers.positions when the bags are weighted
// (their coefficients' weights); returns the number of unique rows. `blocks` cut the positions
// into runs of whole bags, so a walk over them knows each position's bag: an entry is tagged with
// its bag, and with its position only when weighted (the bag then looked up in
// buffers.bag_of_position, written by the same walk) or when each position is its own bag.
template <class Codec>
std::int64_t sort_into_rows(const bag_source& bags, const bag_blocks& blocks, int row_bits, std::int64_t padding_idx,
                            reduction reduce, const execution& how, int chunks, Codec codec,
                            std::vector<typename Codec::type>& entries, transpose_buffers& buffers) {
  using Entry = typename Codec::type;
  const std::int64_t nnz = bags.nnz;
  const bool weighted = bags.weights != nullptr;
  const bool bag_per_position = reduce.pool == pooling::lookup || bags.one_index_each;
  const bool tagged_by_position = weighted && !bag_per_position;
  const bool scaled = reduce.pool != pooling::lookup && reduce.scaling != bag_scaling::none;
  const auto index_end = [&](int k) { return k + 1 < blocks.count ? blocks.blocks[k + 1].index_begin : nnz; };
  const auto bag_end = [&](std::int64_t b, std::int64_t start) { return bag_per_position ? b + 1 : end_of_bag(bags, b, start); };
  if (tagged_by_position) buffers.bag_of_position.resize(static_cast<std::size_t>(nnz));
  if (scaled) buffers.bag_divisor.resize(static_cast<std::size_t>(bags.num_bags));

  // The non-padding positions in order: count per block (and each bag's divisor when the
  // reduction scales, forward's tally in order), then each one's sort entry. Padding is counted
  // even without a padding_idx: the index policies rewrite a skipped index as no_padding.
  std::vector<std::int64_t>& chunk_start = buffers.chunk_start;
  chunk_start.assign(static_cast<std::size_t>(std::max(chunks, blocks.count)) + 1, 0);
  with_indices(bags, [&](const auto* indices) {
    run_blocks(blocks.count, how, [&](std::int64_t k) {
      const bag_block& block = blocks.blocks[k];
      std::int64_t n = 0;
      if (scaled) {
        std::int64_t start = block.index_begin;
        for (std::int64_t b = block.bag_begin; b < block.bag_end; ++b) {
          const std::int64_t end = bag_end(b, start);
          bag_tally tally;
          for (std::int64_t j = start; j < end; ++j)
            if (indices[j] != padding_idx) tally_row(tally, weighted ? bags.weights[j] : 1.0f);
          buffers.bag_divisor[b] = bag_divisor(reduce.scaling, weighted, tally);
          n += tally.count;
          start = end;
        }
      } else {
        const std::int64_t end = index_end(static_cast<int>(k));
        for (std::int64_t j = block.index_begin; j < end; ++j) n += indices[j] != padding_idx;
      }
      chunk_start[k + 1] = n;
    });
  });
  for (int k = 0; k < blocks.count; ++k) chunk_start[k + 1] += chunk_start[k];
  const std::int64_t m = chunk_start[blocks.count];
  entries.resize(2 * static_cast<std::size_t>(m));  // the entries, then the sort's scratch
  std::int64_t* const bag_of_position = buffers.bag_of_position.data();
  with_indices(bags, [&](const auto* indices) {
    run_blocks(blocks.count, how, [&](std::int64_t k) {
      const bag_block& block = blocks.blocks[k];
      std::int64_t out = chunk_start[k], start = block.index_begin;
      for (std::int64_t b = block.bag_begin; b < block.bag_end; ++b) {
        const std::int64_t end = bag_end(b, start);
        for (std::int64_t j = start; j < end; ++j) {
          if (tagged_by_position) bag_of_position[j] = b;
          if (indices[j] != padding_idx) entries[out++] = codec.make(indices[j], weighted ? j : b);
        }
        start = end;
      }
    });
  });

  // Sorted by row with a stable LSD radix sort over the row's digits only, so each row's positions
  // stay ascending: per pass, a histogram per chunk, their prefix digit by digit then chunk by
  // chunk, a scatter per chunk. Digits of at most 11 bits, as even as the row's bits allow (20
  // bits: two passes of 10), so the histogram and the scatter's open lines stay in L1.
  const int passes = (row_bits + 10) / 11;
  const int digit_bits = passes == 0 ? 0 : (row_bits + passes - 1) / passes;
  const std::int64_t radix = std::int64_t{1} << digit_bits;
  buffers.histogram.resize(static_cast<std::size_t>(radix * chunks));
  Entry* sorted = entries.data();
  Entry* sorted_out = entries.data() + m;
  for (int shift = 0; shift < row_bits; shift += digit_bits) {
    // by value: its mask then stays in a register across the histogram's int64 stores
    const auto digit = [codec, shift, mask = static_cast<std::uint64_t>(radix - 1)](const Entry& e) {
      return static_cast<std::int64_t>(codec.row_from(e, shift) & mask);
    };
    std::int64_t* histogram = buffers.histogram.data();  // chunk c's counts at histogram[c * radix + digit]
    run_blocks(chunks, how, [&](std::int64_t c) {
      std::int64_t* h = histogram + c * radix;
      std::fill(h, h + radix, 0);
      const auto [begin, end] = chunk_of(m, chunks, c);
      for (std::int64_t i = begin; i < end; ++i) ++h[digit(sorted[i])];
    });
    std::int64_t sum = 0;
    for (std::int64_t d = 0; d < radix; ++d)
      for (int c = 0; c < chunks; ++c) sum += std::exchange(histogram[c * radix + d], sum);
    run_blocks(chunks, how, [&](std::int64_t c) {
      std::int64_t* h = histogram + c * radix;
      const auto [begin, end] = chunk_of(m, chunks, c);
      // The line an entry ahead will be written to, prefetched for writing: the scratch has left
      // the caches since the last call (a sparse gradient's rows went through them), and each
      // bucket's next line missed (the scatter's two passes: 0.43 -> 0.29 ms on one thread, 0.37 ->
      // 0.23 ms on two, for R = 1M, B x L = 2,048 x 40; 8 to 32 ahead within noise).
      for (std::int64_t i = begin; i < end; ++i) {
        __builtin_prefetch(sorted_out + h[digit(sorted[std::min(i + scatter_ahead, end - 1)])], 1);
        sorted_out[h[digit(sorted[i])]++] = sorted[i];
      }
    });
    std::swap(sorted, sorted_out);
  }

  // The kernels' arrays from the sorted entries (each position's bag, its tag or looked up by its
  // position when weighted, so the kernels read bags in order), and the unique rows with where
  // their positions start, in the same pass: each chunk writes its unique rows from its own first
  // entry's slot on (it has at most that many), then they move down behind the chunks before it
  // (chunk 0's stay: one chunk moves nothing).
  if (weighted) buffers.positions.resize(static_cast<std::size_t>(m));
  buffers.bags.resize(static_cast<std::size_t>(m));
  buffers.unique_rows.resize(static_cast<std::size_t>(m));
  buffers.segment_begin.resize(static_cast<std::size_t>(m) + 1);
  std::int64_t* const positions = buffers.positions.data();
  std::int64_t* const bag_of_sorted = buffers.bags.data();
  std::int64_t* const unique_rows = buffers.unique_rows.data();
  std::int64_t* const segment_begin = buffers.segment_begin.data();
  run_blocks(chunks, how, [&](std::int64_t c) {
    const auto [begin, end] = chunk_of(m, chunks, c);
    std::int64_t u = begin;
    std::int64_t previous_row = begin == 0 ? -1 : codec.row(sorted[begin - 1]);
    for (std::int64_t i = begin; i < end; ++i) {
      const std::int64_t tag = codec.tag(sorted[i]), row = codec.row(sorted[i]);
      if (weighted) positions[i] = tag;
      bag_of_sorted[i] = tagged_by_position ? bag_of_position[tag] : tag;
      if (row != previous_row) {
        unique_rows[u] = row;
        segment_begin[u++] = i;
        previous_row = row;
      }
    }
    chunk_start[c + 1] = u - begin;
  });
  std::int64_t unique = chunk_start[1];
  for (int c = 1; c < chunks; ++c) {
    const std::int64_t from = chunk_of(m, chunks, c).begin, count = chunk_start[c + 1];
    std::memmove(unique_rows + unique, unique_rows + from, static_cast<std::size_t>(count) * sizeof(std::int64_t));
    std::memmove(segment_begin + unique, segment_begin + from, static_cast<std::size_t>(count) * sizeof(std::int64_t));
    unique += count;
  }
  buffers.segment_begin[unique] = m;
  return unique;
}

}  // namespace

row_transpose build_row_transpose(const bag_source& bags, std::int64_t table_rows, std::int64_t padding_idx,
                                  reduction reduce, bool scale_grad_by_freq, const execution& how,
                                  transpose_buffers& buffers) {
  const std::int64_t nnz = bags.nnz;
  const int threads = threads_for(how);
  // Chunks of positions for the parallel passes; the result is the same for any chunking.
  const int chunks = nnz < 16384 || threads <= 1 ? 1 : std::min(threads * 4, 64);

  // Blocks of whole bags for the walks that tag each position with its bag (one per chunk).
  bag_blocks blocks;
  blocks.count = 0;
  cut_forward_blocks(bags, reduce.pool, chunks, [&](const bag_block& b) { blocks.blocks[blocks.count++] = b; });

  // Each sort entry holds a row and its tag: in one word when both fit, as they do but for tables
  // of billions of rows read by billions of indices.
  const std::int64_t tags = bags.weights != nullptr || reduce.pool == pooling::lookup ? nnz : bags.num_bags;
  const int tag_bits = std::bit_width(static_cast<std::uint64_t>(std::max<std::int64_t>(tags - 1, 0)));
  const int row_bits = std::bit_width(static_cast<std::uint64_t>(std::max<std::int64_t>(table_rows - 1, 0)));
  const std::int64_t unique =
      row_bits + tag_bits <= 64
          ? sort_into_rows(bags, blocks, row_bits, padding_idx, reduce, how, chunks, packed_entry{tag_bits}, buffers.packed_entries, buffers)
          : sort_into_rows(bags, blocks, row_bits, padding_idx, reduce, how, chunks, wide_entry{}, buffers.wide_entries, buffers);

  row_transpose t;
  t.unique_rows = buffers.unique_rows.data();
  t.segment_begin = buffers.segment_begin.data();
  t.bags = buffers.bags.data();
  t.num_unique = unique;

  // Each position's coefficient in its row's gradient, when a pooled sum has any but 1.
  const bool scaled = reduce.scaling != bag_scaling::none;
  if (reduce.pool != pooling::max && (bags.weights != nullptr || scaled || scale_grad_by_freq)) {
    buffers.coefficients.resize(static_cast<std::size_t>(t.segment_begin[unique]));
    float* const coefficients = buffers.coefficients.data();
    run_blocks(chunks, how, [&](std::int64_t c) {
      const auto [begin, end] = chunk_of(unique, chunks, c);
      for (std::int64_t u = begin; u < end; ++u) {
        const std::int64_t first = t.segment_begin[u], last = t.segment_begin[u + 1];
        for (std::int64_t k = first; k < last; ++k) {
          float coefficient = bags.weights != nullptr ? bags.weights[buffers.positions[k]] : 1.0f;
          if (scaled) coefficient = divided(coefficient, buffers.bag_divisor[t.bags[k]]);
          if (scale_grad_by_freq) coefficient = coefficient / static_cast<float>(last - first);
          coefficients[k] = coefficient;
        }
      }
    });
    t.coefficients = coefficients;
  }
  return t;
}

void renorm_distinct_rows(float* table, std::int64_t row_stride, std::int64_t dim, const void* rows,
                          index_type rows_kind, std::int64_t count, float max_norm, float norm_type,
                          workspace::impl& ws) {
  // before any row is written: out of memory leaves the table as it was
  allocating<std::int64_t>(
      static_cast<std::size_t>(count),
      [&] { return "the sorted rows of max_norm over " + std::to_string(count) + " indices"; },
      [&] { ws.keys.resize(static_cast<std::size_t>(count)); });
  for (std::int64_t i = 0; i < count; ++i)
    ws.keys[i] = element_at(rows, rows_kind, i);
  std::sort(ws.keys.begin(), ws.keys.end());
  const auto last = std::unique(ws.keys.begin(), ws.keys.end());
  for (auto it = ws.keys.begin(); it != last; ++it) {
    float* row = table + *it * row_stride;
    const float scale = max_norm_scale(row, dim, max_norm, norm_type);
    if (scale != 1.0f)
      for (std::int64_t d = 0; d < dim; ++d) row[d] *= scale;
  }
}

}  // namespace embag::detail
