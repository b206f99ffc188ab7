// Plan: turns a validated request into work for the kernels. Splits bags (or unique rows) into
// blocks of about equal work for the parallel loop, picks the prefetch setting for the table's
// size class, builds the row transpose that backward needs, and applies in-place max_norm.
#pragma once

#include <atomic>
#include <mutex>

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "embag/embag.hpp"
#include "request.hpp"

namespace embag {

namespace detail {

// Up to this many blocks per call: enough to balance any thread count we run with, small enough
// to live on the stack.
inline constexpr int max_blocks = 512;

// Items [begin, end): table rows, or the unique rows of a row transpose.
struct item_range {
  std::int64_t begin = 0, end = 0;
};

template <class Block>
struct block_list {
  std::array<Block, max_blocks> blocks;
  int count = 0;
};
using bag_blocks = block_list<bag_block>;
using range_blocks = block_list<item_range>;

// A block of one table of a batched forward.
struct table_block {
  std::int64_t table = 0;  // its index in the batch
  bag_block block;
};

// A block of one table's unique rows, in a batched backward.
struct table_rows_block {
  std::int64_t table = 0;  // its index in the batch
  item_range rows;
};

// Blocks of bags (or, for mode none, of indices) of about equal work: the number of rows read
// plus the rows written, times dim. One block when the call runs on one thread.
void plan_forward_blocks(const bag_source& bags, pooling pool, std::int64_t dim, int threads,
                         bag_blocks& out);

// The blocks of every table of a batched forward, for one parallel loop: the tables' work (as
// plan_forward_blocks counts it) split as one call's would be, each table's share of the blocks
// proportional to its work and at least one (none for a table without bags). Every table in one
// block when the call runs on one thread, the blocks in table order. `out` only grows (a reused
// workspace stops allocating). Returns the threads the blocks are worth: 1 (run them inline) when
// the whole call is too little work to split, as a single call's would be.
int plan_batched_forward_blocks(std::span<const forward_request> tables, int threads, std::vector<table_block>& out);

// The first at most `most` bags of `rest` (mode none: indices) as a block, and `rest` advanced past
// them: how a block is cut into parts whose fp32 rows fit a narrowing stage.
bag_block take_front(const bag_source& bags, pooling pool, bag_block& rest, std::int64_t most);

// [0, items) cut into runs of about equal work (items x work_per_item): what mode none's indices
// and quantize's table rows are split by.
void plan_even_blocks(std::int64_t items, std::int64_t work_per_item, int threads, range_blocks& out);

// The table's rows [0, rows) cut into one contiguous range per thread that `work` floats of rows
// read and written pay for: backward_scatter's blocks.
void plan_row_ranges(std::int64_t rows, std::int64_t work, int threads, range_blocks& out);

// Blocks of the unique rows of t (indices into t.unique_rows) of about equal number of
// contributions: backward_rows' blocks.
void plan_row_blocks(const row_transpose& t, std::int64_t dim, int threads, range_blocks& out);

// Which of a few prefetch settings reads a class of tables fastest on this machine, learnt from
// the first calls: after `warm_up_calls` calls on the first candidate, next() hands out the
// candidates in turn until each has been timed `trials` times, then the one whose median time per
// byte was lowest, for good. The warm-up's times are not counted: a process's first calls on a table fault
// its pages in and fill the caches for longer than a few calls (from Python, R = 1M, D = 128, 8
// sets of 2,048 one-index bags: 150-200 ps a byte over the first 16-20 calls, 80-95 after), and
// timed, 5 of each candidate's 8 calls were cold: the candidates were judged on DRAM, and the
// choice differed from process to process. The median (not the mean) discards noise, and (not
// the best) a call whose rows a call just before it had brought into the caches: a max timed
// right after a sum of the same bags took 0.6x its time alone and won with the slowest candidate
// (`embag bench --mode sum,max --rows 100000 --dim 128`: max 1.89 ms, 1.61 with the sums'
// winner). Thread-safe.
class prefetch_trials {
 public:
  static constexpr int warm_up_calls = 32;
  static constexpr int trials = 8;
  static constexpr int max_candidates = 5;
  explicit prefetch_trials(int candidates) noexcept : candidates_(candidates) {}
  // The candidate (0 to candidates - 1) the next call uses; `on_trial`: report its time.
  int next(bool& on_trial) noexcept;
  void report(int candidate, double seconds_per_byte) noexcept;
  int chosen() const noexcept { return chosen_.load(std::memory_order_acquire); }  // -1 while on trial

 private:
  int candidates_;
  std::atomic<int> handed_out_{0};
  std::atomic<int> chosen_{-1};
  std::mutex mutex_;
  double seconds_per_byte_[max_candidates][trials] = {};
  int reported_[max_candidates] = {};
  int warm_up_reports_ = 0;
};

// Prefetch level and distance for this table and row size: by the table's size class against
// the caches, or as the caller (or EMBAG_PREFETCH, e.g. "l2:32", "l1:16", "none") forces. For a
// table past half of L2, prefetching into L2 (32 KiB in flight) in narrow passes, into L2 in one
// pass, and into L1 8 KiB or 4 KiB ahead each won on some machine of this project or table class,
// and within the LLC no prefetch at all (DESIGN.md section 4 and issue 13's measurements): such
// calls are prefetch_trials among them, learnt apart per table class (within the LLC or skewed;
// past it), bag length and row size, and req.prefetch_trial names the candidate whose time run_forward reports to
// req.prefetch_trial_set (-1: not a trial; a batched forward times each table's blocks).
// may_trial = false: a call that cannot time this table on its own takes the candidate decided
// so far instead.
void choose_prefetch(forward_request& req, const prefetch_setting& asked, bool may_trial = true);

// How far ahead, and into which cache, backward_scatter prefetches the gradient rows it will
// write, and an optimizer's step the table and state rows it will write: by the written rows'
// size against L2, or as the caller (or EMBAG_PREFETCH) forces.
void choose_scatter_prefetch(backward_request& r, const prefetch_setting& asked);
// The time of a call choose_prefetch put on trial.
void report_prefetch_trial(const forward_request& req, double seconds) noexcept;

// How an optimizer's steps bring in the table and state rows they will write (update_request::
// fetch), for the tables whose rows choose_scatter_prefetch (run first) fetches: demand loads of
// each chunk's rows, or prefetches into L2 of the next chunk's while this one is worked on. Each
// won on a machine of this project: on the Zen 4 guest the loads (prefetches there changed
// nothing), on the Xeon guest the prefetches (fused Adagrad on R = 1M, D = 128, L = 40: 13-17%
// less time; README, "Training: fused optimizers"). So they are prefetch_trials, a set per
// optimizer and gradient source, unless the caller (or EMBAG_PREFETCH) forces a level: l1 the
// loads, l2 the prefetches, none neither. The result names the trial whose time
// report_update_fetch_trial takes (candidate -1: not on trial). Without may_trial (the update's
// roofline), automatic is what the trials have decided, or else their first candidate.
struct update_fetch_trial {
  int set = -1, candidate = -1;
  std::int64_t bytes = 0;  // the table and state bytes the call's steps bring in
};
update_fetch_trial choose_update_fetch(std::span<update_request> tables, const prefetch_setting& asked, bool may_trial);
void report_update_fetch_trial(const update_fetch_trial& trial, double seconds) noexcept;

// A row transpose's memory: its arrays and the sort's. A workspace keeps one for single calls and
// one per table for a batched call, whose transposes are built at once. Vectors only grow.
struct transpose_buffers {
  std::vector<std::uint64_t> packed_entries;        // sort entries, one word each, then their scratch
  std::vector<row_and_position> wide_entries;       // ... when a row and a position need two words
  std::vector<std::int64_t> positions, bags;        // the sorted positions (weighted bags only) and their bags
  std::vector<std::int64_t> unique_rows, segment_begin;
  std::vector<std::int64_t> bag_of_position;
  std::vector<float> bag_divisor, coefficients;
  std::vector<std::int64_t> histogram, chunk_start;  // the sort's per-chunk counts
};

// The bags transposed into rows (see row_transpose), in `buffers`, built on the threads `how`
// allows; the result does not depend on the thread count.
row_transpose build_row_transpose(const bag_source& bags, std::int64_t table_rows, std::int64_t padding_idx,
                                  reduction reduce, bool scale_grad_by_freq, const execution& how,
                                  transpose_buffers& buffers);

// torch.embedding_renorm_: each distinct row among `rows` whose norm exceeds max_norm is scaled
// by max_norm_scale, once.
void renorm_distinct_rows(float* table, std::int64_t row_stride, std::int64_t dim, const void* rows,
                          index_type rows_kind, std::int64_t count, float max_norm, float norm_type,
                          workspace::impl& ws);

}  // namespace detail
}  // namespace embag
