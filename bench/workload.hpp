// Named benchmark workloads shared by the Google Benchmark suite and `embag bench`: a table and
// several index sets drawn from a distribution, rotated between calls so rows are not re-read
// from cache, and the timing helpers that compare a kernel with the in-process roofline.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "embag/embag.hpp"
#include "embag/quantize.hpp"
#include "embag/roofline.hpp"

namespace embag::bench {

enum class distribution { uniform, zipf };

struct workload_spec {
  std::int64_t rows = 1'000'000;
  std::int64_t dim = 128;
  std::int64_t bags = 2048;
  std::int64_t pooling = 40;   // L: mean bag length
  bool variable_length = false;  // lengths uniform in [1, 2L - 1] instead of all L
  distribution dist = distribution::uniform;
  double zipf_exponent = 1.05;
  int index_sets = 8;
  std::uint64_t seed = 42;

  // "R:1000000/D:128/L:40/uniform" (with "/var" for variable lengths)
  std::string name() const;
  std::int64_t table_bytes() const { return rows * dim * 4; }
};

// One batch: its own index array, offsets and weights (all 1 < w < 2), plus the workspace and
// output buffers calls reuse.
struct index_set {
  std::vector<std::int64_t> indices, offsets;
  std::vector<float> weights;
};

// The fp32 table (values uniform in [-1, 1)), its compressed copies in the element types added
// so far, and the index sets every element type is read with.
struct workload {
  workload_spec spec;
  table rows_table;
  std::vector<index_set> sets;

  explicit workload(const workload_spec& s);
  std::int64_t lookups(int set) const { return static_cast<std::int64_t>(sets[set].indices.size()); }
  bags batch(int set, bool weighted = false) const;
  // Quantises the table to `type` unless already done (f32 needs nothing).
  void add(dtype type);
  // The table in `type` (added before; f32 is rows_table itself).
  compressed_table_view table_in(dtype type) const;

 private:
  std::vector<compressed_table> compressed_;
};

// The operations benchmarked, each one call on one index set.
enum class operation { forward_sum, forward_mean, forward_max, forward_weighted_sum, forward_lookup,
                       backward_dense, backward_sparse };
const char* operation_name(operation op);  // "forward/sum", "backward/sparse", ...
bool is_forward(operation op);

// Buffers reused across calls of one operation, so timing sees no allocation.
struct call_buffers {
  std::vector<float> out, grad_output;
  std::optional<table> dense_grad;  // R x D, huge-page backed like the table itself
  std::vector<std::int64_t> argmax;
  sparse_gradient sparse;
  workspace scratch;
};

// How a benchmark call runs: this ISA, this many threads, this prefetch (default: automatic).
execution execution_for(isa which, int threads, prefetch_setting prefetch = {});
// "none", "l1:16", "l2:32"
std::string prefetch_name(prefetch_setting p);
// The name every benchmark result carries, e.g. forward/sum/avx512/f32/R:1000000/D:128/L:40/uniform/threads:1
// (the element type after the ISA: f32, f16, bf16, int8_rowwise, int4_rowwise)
std::string benchmark_name(const char* family, isa which, dtype type, const workload_spec& spec, int threads);

// Runs `op` once on index set `set`, forward reading the table in `type` (backward: f32 only).
void run_operation(operation op, const workload& w, int set, const execution& how, call_buffers& buffers,
                   dtype type = dtype::f32);

// The bytes of row data an operation reads per call: lookups x the bytes of a row stored in `type`
// (D x 4 for f32, what the fp32-equivalent rates count).
double row_bytes(const workload& w, int set, dtype type = dtype::f32);

// The median of some timings (of an even count, the upper of the middle two); not empty.
inline double median(std::vector<double> seconds) {
  std::nth_element(seconds.begin(), seconds.begin() + std::ssize(seconds) / 2, seconds.end());
  return seconds[seconds.size() / 2];
}

// Whether a loop of timed calls that began at `start` makes call number `call`: at least 5 calls,
// then until `budget` seconds have passed, at most 2000.
inline bool keep_timing(int call, std::chrono::steady_clock::time_point start, double budget) {
  return call < 5 || (call < 2000 && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < budget);
}

// Seconds per call of f: the median of `calls` timed calls after one untimed warm-up call.
template <class F>
double median_seconds(int calls, F&& f) {
  std::vector<double> seconds;
  f();
  for (int i = 0; i < calls; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return median(std::move(seconds));
}

// The roofline on a workload: one gather_roofline per index set over the table in `type`, run with
// `how` (its ISA, threads and prefetch), summing into a buffer of its own.
class roofline_runs {
 public:
  roofline_runs(const workload& w, dtype type, const execution& how);
  void run(int set) const { per_set_[static_cast<std::size_t>(set)].run(); }
  prefetch_setting prefetch() const noexcept { return per_set_.front().prefetch(); }

 private:
  std::vector<float> out_;
  std::vector<gather_roofline> per_set_;
};

// Every row of the fp32 table in order, in bags of 64, no software prefetch (the hardware
// prefetcher handles a sequential stream): what the memory system delivers at best.
class sequential_roofline {
 public:
  sequential_roofline(const workload& w, int threads, isa which);
  void run() const { gather_->run(); }

 private:
  std::vector<std::int64_t> rows_, offsets_;
  std::vector<float> out_;
  std::optional<gather_roofline> gather_;
};

// The roofline's best prefetch on this workload's table in `type` and thread count, from a sweep
// of levels and distances (none; L1 4 to 64 rows ahead; L2 in narrow passes and in one pass 8 to 64); and the sequential-read
// bandwidth of the fp32 table in bytes/s.
prefetch_setting best_roofline_prefetch(const workload& w, int threads, isa which, dtype type = dtype::f32);
// The settings that sweep tries.
std::span<const prefetch_setting> roofline_prefetch_sweep();
double sequential_read_bytes_per_second(const workload& w, int threads, isa which);

// Classifies the table against this machine's caches: "cache" (< L2), "LLC", or "DRAM" (>= 4 x LLC),
// "LLC-DRAM" in between.
std::string size_class(std::int64_t table_bytes);

}  // namespace embag::bench
