// embag_benchmark: the Google Benchmark suite (Google Benchmark 1.7.1).
//
// One family per operation (forward sum, mean, max, weighted sum, plain lookup; backward dense and
// sparse), each on every ISA of embag::available_isas() (reference included), over the grid
//   R in {10000, 1000000} x D in {32, 64, 128, 256, 100}, plus R = 2^21 at D = 128 (a 1 GiB table,
//     registered only when physical memory is at least 4 GiB),
//   B = 2048 bags, L = 40 fixed or variable (lengths uniform in [1, 79]), uniform or zipf indices,
//   threads 1 and all (embag::default_threads(); the reference is single-threaded: threads:1 only),
// plus roofline/read (embag::gather_roofline on the same index sets with the best prefetch) and
// roofline/sequential (the whole table read in order) for the raw memory figures. The forward
// families and roofline/read run again on compressed tables (f16, bf16, int8_rowwise,
// int4_rowwise) for R in {10000, 1000000}, D in {32, 64, 128, 256}, L = 40 fixed, uniform. Names
// are those `embag bench --json` writes, so one plot script and Google Benchmark's compare.py read both:
//   forward/sum/avx512/f32/R:1000000/D:128/L:40/uniform/threads:1
//   forward/sum/avx512/int8_rowwise/R:1000000/D:128/L:40/uniform/threads:1
//   backward/sparse/avx2/f32/R:10000/D:100/L:40/var/zipf/threads:2
//   roofline/read/avx512/f32/R:1000000/D:128/L:40/uniform/threads:2
// Counters: bytes_per_second (lookups x the stored row bytes per call: D x 4 for f32, D + 8 for
// int8_rowwise, ...), f32_equivalent_bytes_per_second (lookups x D x 4) and items_per_second
// (lookups), all per second of wall-clock time; roofline_bytes_per_second and roofline_fraction
// (the kernel's bytes/s over the roofline's on the same rows, index sets and threads, measured just
// before the timed loop);
// speedup_vs_reference when the reference ran earlier in the same process. The label gives the
// table's size class against this machine's caches (cache, LLC, LLC-DRAM, DRAM).
//
// The full grid is about 2,300 benchmarks and holds GiBs of tables: always pick a subset with a
// regular expression on the name (--benchmark_filter), for example
//   build/bench/embag_benchmark --benchmark_filter='R:10000/D:128/L:40/uniform/'     (the default of
//       `meson test -C build --benchmark`, with --benchmark_min_time=0.05)
//   build/bench/embag_benchmark --benchmark_filter='^forward/sum/.*/R:1000000/D:128/L:40/uniform/'
//   build/bench/embag_benchmark --benchmark_filter='^(roofline|forward/max)/.*R:1000000/D:(64|128)/L:40/zipf'
//   build/bench/embag_benchmark --benchmark_filter='threads:1$' --benchmark_list_tests=true
//   build/bench/embag_benchmark --benchmark_filter=... --benchmark_min_time=0.2
//       --benchmark_out=results.json --benchmark_out_format=json   (then tools/plot_bench.py results.json)
// --benchmark_min_time takes a bare number of seconds in 1.7.1 (0.05, not 0.05s).
//
// Rates are computed from wall-clock time around the timed loop rather than with
// SetBytesProcessed: Google Benchmark divides those by the main thread's CPU time, which is wrong
// for TBB-parallel calls and on a shared machine, and UseRealTime() would append "/real_time" to
// every name.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include "workload.hpp"

namespace {

using namespace embag;
using namespace embag::bench;
using clock_type = std::chrono::steady_clock;

std::int64_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? std::int64_t(pages) * page : 0;
}

std::int64_t resident_bytes(const workload& w) {
  std::int64_t bytes = w.rows_table.rows() * w.rows_table.row_stride() * 4;
  for (const index_set& s : w.sets)
    bytes += std::int64_t(s.indices.size() * 8 + s.offsets.size() * 8 + s.weights.size() * 4);
  return bytes;
}

// Workloads, built on first use and kept (keyed by spec name) so every benchmark of one spec, and
// every call Google Benchmark makes while it sizes the iteration count, share one table. They are
// freed only at exit, except that before building a new one that would take the cache past half
// of physical memory, the cache is emptied (benchmarks are registered spec by spec, so a filtered
// run never comes back to an evicted spec).
std::map<std::string, std::unique_ptr<workload>>& workloads() {
  static std::map<std::string, std::unique_ptr<workload>> cache;
  return cache;
}

// The workload of a spec with its table in `type` added.
const workload& get_workload(const workload_spec& spec, dtype type = dtype::f32) {
  auto& cache = workloads();
  const std::string key = spec.name();
  auto it = cache.find(key);
  if (it == cache.end()) {
    std::int64_t cached = 0;
    for (const auto& [name, w] : cache) cached += resident_bytes(*w);
    const std::int64_t memory = physical_memory_bytes();
    if (memory > 0 && cached + spec.table_bytes() > memory / 2) cache.clear();
    it = cache.emplace(key, std::make_unique<workload>(spec)).first;
  }
  it->second->add(type);
  return *it->second;
}

// The roofline's best prefetch per (spec, element type, threads): roofline_prefetch_sweep(), found once.
prefetch_setting roofline_prefetch(const workload& w, dtype type, int threads) {
  static std::map<std::tuple<std::string, dtype, int>, prefetch_setting> cache;
  const auto key = std::make_tuple(w.spec.name(), type, threads);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  return cache[key] = best_roofline_prefetch(w, threads, available_isas().back(), type);
}

// The roofline's bytes/s on this workload's table in `type`: one gather per index set after a
// warm-up call, the median of the per-set rates (sets differ in length with variable-length bags).
double roofline_bytes_per_second(const workload& w, dtype type, int threads, prefetch_setting prefetch) {
  const roofline_runs roofline(w, type, execution_for(available_isas().back(), threads, prefetch));
  roofline.run(0);
  std::vector<double> rates;
  for (int set = 0; set < static_cast<int>(w.sets.size()); ++set) {
    const auto t0 = clock_type::now();
    roofline.run(set);
    const double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
    rates.push_back(row_bytes(w, set, type) / seconds);
  }
  std::nth_element(rates.begin(), rates.begin() + rates.size() / 2, rates.end());
  return rates[rates.size() / 2];
}

// Buffers of the benchmark that runs now, kept across the several runs Google Benchmark makes of
// one benchmark (so a 1 GiB dense gradient is allocated once), replaced when the next one starts.
// `fresh` says they were just made: the caller then sizes them on every index set.
call_buffers& buffers_for(const std::string& benchmark_name, bool& fresh) {
  static std::string owner;
  static std::unique_ptr<call_buffers> buffers;
  fresh = !buffers || owner != benchmark_name;
  if (fresh) {
    buffers.reset();
    buffers = std::make_unique<call_buffers>();
    owner = benchmark_name;
  }
  return *buffers;
}

// The reference's bytes/s per (operation, spec), for speedup_vs_reference of later benchmarks.
std::map<std::string, double>& reference_rates() {
  static std::map<std::string, double> rates;
  return rates;
}


void set_rates(benchmark::State& state, double bytes, double items, double seconds) {
  state.counters["bytes_per_second"] = benchmark::Counter(bytes / seconds);
  state.counters["items_per_second"] = benchmark::Counter(items / seconds);
}

void skip_with(benchmark::State& state, const std::exception& e) {
  state.SkipWithError(e.what());
}

// forward/..., backward/...: `op` on `which` over the table in `type`, the index sets rotating
// between iterations.
void run_kernel(benchmark::State& state, const std::string& name, operation op, isa which, dtype type,
                const workload_spec& spec, int threads) {
  try {
    const workload& w = get_workload(spec, type);
    const int sets = static_cast<int>(w.sets.size());
    const prefetch_setting prefetch = roofline_prefetch(w, type, threads);
    bool fresh = false;
    call_buffers& buffers = buffers_for(name, fresh);
    const execution e = execution_for(which, threads);
    // Warm-up. New buffers are grown on every index set (the sets differ in length with variable
    // bags), so the timed loop never allocates.
    for (int set = 0; set < (fresh ? sets : 1); ++set) run_operation(op, w, set, e, buffers, type);
    const double roofline = roofline_bytes_per_second(w, type, threads, prefetch);

    std::int64_t lookups = 0;
    int set = 0;
    const auto start = clock_type::now();
    for (auto _ : state) {
      run_operation(op, w, set, e, buffers, type);
      lookups += w.lookups(set);
      set = set + 1 == sets ? 0 : set + 1;
    }
    const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();

    const double bytes = double(lookups) * double(row_bytes(type, spec.dim));
    set_rates(state, bytes, double(lookups), seconds);
    state.counters["f32_equivalent_bytes_per_second"] = benchmark::Counter(double(lookups) * double(spec.dim) * 4.0 / seconds);
    const double rate = bytes / seconds;
    state.counters["roofline_bytes_per_second"] = benchmark::Counter(roofline);
    state.counters["roofline_fraction"] = benchmark::Counter(rate / roofline);
    const std::string ref_key = std::string(operation_name(op)) + "/" + std::string(to_string(type)) + "/" + spec.name();
    if (which == isa::reference) {
      reference_rates()[ref_key] = rate;
    } else if (auto it = reference_rates().find(ref_key); it != reference_rates().end()) {
      state.counters["speedup_vs_reference"] = benchmark::Counter(rate / it->second);
    }
    state.SetLabel(size_class(spec.table_bytes()) + " roofline:" + prefetch_name(prefetch));
  } catch (const std::exception& e) {
    skip_with(state, e);
  }
}

// roofline/read: the roofline alone on the same index sets and table, with the best prefetch for the
// threads.
void run_roofline_read(benchmark::State& state, const workload_spec& spec, dtype type, int threads) {
  try {
    const workload& w = get_workload(spec, type);
    const int sets = static_cast<int>(w.sets.size());
    const prefetch_setting prefetch = roofline_prefetch(w, type, threads);
    const roofline_runs roofline(w, type, execution_for(available_isas().back(), threads, prefetch));
    roofline.run(0);
    std::int64_t lookups = 0;
    int set = 0;
    const auto start = clock_type::now();
    for (auto _ : state) {
      roofline.run(set);
      lookups += w.lookups(set);
      set = set + 1 == sets ? 0 : set + 1;
    }
    const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    set_rates(state, double(lookups) * double(row_bytes(type, spec.dim)), double(lookups), seconds);
    state.SetLabel(size_class(spec.table_bytes()) + " prefetch:" + prefetch_name(prefetch));
  } catch (const std::exception& e) {
    skip_with(state, e);
  }
}

// roofline/sequential: every row of the table in order, no software prefetch (the hardware
// prefetcher handles a stream). Bytes are whole padded rows, as sequential_read_bytes_per_second
// counts them: what the memory system delivers.
void run_roofline_sequential(benchmark::State& state, const workload_spec& spec, int threads) {
  try {
    const workload& w = get_workload(spec);
    const sequential_roofline read_all(w, threads, available_isas().back());
    read_all.run();
    std::int64_t calls = 0;
    const auto start = clock_type::now();
    for (auto _ : state) {
      read_all.run();
      ++calls;
    }
    const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    set_rates(state, double(calls) * double(spec.rows) * double(w.rows_table.row_stride()) * 4.0,
              double(calls) * double(spec.rows), seconds);
    state.SetLabel(size_class(spec.table_bytes()));
  } catch (const std::exception& e) {
    skip_with(state, e);
  }
}

void register_roofline_read(const workload_spec& spec, dtype type, int threads) {
  benchmark::RegisterBenchmark(benchmark_name("roofline/read", available_isas().back(), type, spec, threads).c_str(),
                               [spec, type, threads](benchmark::State& s) { run_roofline_read(s, spec, type, threads); })
      ->Unit(benchmark::kMillisecond);
}

void register_kernels(const std::vector<operation>& ops, const std::vector<isa>& isas,
                      const std::vector<int>& thread_counts, const workload_spec& spec, dtype type) {
  for (operation op : ops)
    for (int threads : thread_counts)
      for (isa which : isas) {
        if (which == isa::reference && threads != 1) continue;  // the reference is one thread
        const std::string name = benchmark_name(operation_name(op), which, type, spec, threads);
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) {
          run_kernel(s, name, op, which, type, spec, threads);
        })->Unit(benchmark::kMillisecond);
      }
}

void register_all() {
  const std::vector<isa> isas = available_isas();
  const isa best = isas.back();
  const int all = default_threads();
  const std::vector<int> thread_counts = all > 1 ? std::vector<int>{1, all} : std::vector<int>{1};
  const std::vector<operation> ops = {operation::forward_sum,          operation::forward_mean,
                                      operation::forward_max,          operation::forward_weighted_sum,
                                      operation::forward_lookup,       operation::backward_dense,
                                      operation::backward_sparse};

  std::vector<std::pair<std::int64_t, std::int64_t>> tables;  // (R, D)
  for (std::int64_t rows : {10'000, 1'000'000})
    for (std::int64_t dim : {32, 64, 128, 256, 100}) tables.emplace_back(rows, dim);
  const workload_spec big{.rows = std::int64_t(1) << 21, .dim = 128};
  const std::int64_t memory = physical_memory_bytes();
  // The table, its dense gradient and headroom.
  if (memory >= 4 * big.table_bytes()) {
    tables.emplace_back(big.rows, big.dim);
  } else {
    std::fprintf(stderr, "embag_benchmark: skipping the %lld MiB table (R:%lld/D:%lld): %lld MiB of physical memory\n",
                 (long long)(big.table_bytes() >> 20), (long long)big.rows, (long long)big.dim,
                 (long long)(memory >> 20));
  }

  for (const auto& [rows, dim] : tables)
    for (bool variable : {false, true})
      for (distribution dist : {distribution::uniform, distribution::zipf}) {
        workload_spec spec;
        spec.rows = rows;
        spec.dim = dim;
        spec.bags = 2048;
        spec.pooling = 40;
        spec.variable_length = variable;
        spec.dist = dist;
        for (int threads : thread_counts)
          benchmark::RegisterBenchmark(benchmark_name("roofline/sequential", best, dtype::f32, spec, threads).c_str(),
                                       [spec, threads](benchmark::State& s) { run_roofline_sequential(s, spec, threads); })
              ->Unit(benchmark::kMillisecond);
        for (int threads : thread_counts) register_roofline_read(spec, dtype::f32, threads);
        register_kernels(ops, isas, thread_counts, spec, dtype::f32);
      }

  // Compressed tables: forward only (backward reads no table), fixed-length uniform bags.
  const std::vector<operation> forward_ops(ops.begin(), ops.begin() + 5);
  for (std::int64_t rows : {10'000, 1'000'000})
    for (std::int64_t dim : {32, 64, 128, 256})
      for (dtype type : {dtype::f16, dtype::bf16, dtype::int8_rowwise, dtype::int4_rowwise}) {
        const workload_spec spec{.rows = rows, .dim = dim};
        for (int threads : thread_counts) register_roofline_read(spec, type, threads);
        register_kernels(forward_ops, isas, thread_counts, spec, type);
      }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("embag_version", std::string(embag::version()));
  std::string isa_names;
  for (embag::isa which : embag::available_isas()) {
    if (!isa_names.empty()) isa_names += ',';
    isa_names += embag::to_string(which);
  }
  benchmark::AddCustomContext("embag_isas", isa_names);
  benchmark::AddCustomContext("embag_default_threads", std::to_string(embag::default_threads()));
  const embag::cache_sizes c = embag::caches();
  benchmark::AddCustomContext("embag_caches", "l1d:" + std::to_string(c.l1d) + " l2:" + std::to_string(c.l2) +
                                                  " llc:" + std::to_string(c.llc));
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
