// `embag bench`: the cross-ISA benchmark report. With no workload option it runs the suite: the
// three table classes of this machine (within L2, within the LLC, past it in DRAM, sized from the
// caches), uniform and Zipf indices, bags of 40 and of one index, on the best ISA, and opens with a
// one-screen summary per class (the fraction of the roofline, the speed-up over the reference, max
// and mean against sum, backward against forward, each element type against fp32); then the full
// tables. With --rows, --dim, --pooling, --bags, --dist or --variable it runs that one workload on
// every ISA and operation. Every kernel is first verified against the reference, bit for bit; every
// timed call is followed by a roofline call (gather_roofline: the minimal gather, on the same rows
// of the same table with the best of a sweep of prefetch settings), so each result is a fraction
// of what the memory system delivered in the same run.
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "commands.hpp"
#include "flags.hpp"
#include "embag/batched.hpp"
#include "embag/npy.hpp"
#include "embag/optim.hpp"
#include "workload.hpp"

namespace embag::tool {
namespace {

using namespace embag::bench;

struct bench_options {
  workload_spec spec;
  bool suite = true;  // no workload option given: the three table classes, two distributions, L 40 and 1
  std::vector<std::string> classes = {"cache", "LLC", "DRAM"};
  std::vector<int> threads;  // thread counts to run
  std::vector<isa> isas;
  std::vector<operation> ops = {operation::forward_sum, operation::forward_mean, operation::forward_max,
                                operation::forward_weighted_sum, operation::backward_dense,
                                operation::backward_sparse};
  std::vector<dtype> types{std::begin(all_dtypes), std::end(all_dtypes)};
  std::string json_path, chart_path;
  double seconds_per_result = 0.3;
  std::vector<std::string> modes;          // --mode as given: operations, or optimizers
  std::vector<optimizer_kind> optimizers;  // --mode sgd,adagrad,rowwise_adagrad: the optimizer report instead
  bool dlrm = false;  // --workload dlrm: the table-batched report instead
  double scale = 1.0;  // of the DLRM tables' row cap
};

struct result {
  workload_spec spec;
  std::string table_class;
  operation op;
  dtype type;
  isa which;
  int threads;
  double seconds, roofline_seconds;
  prefetch_setting roofline_prefetch;
  double lookups;  // per call, the mean over the index sets
  double reference_seconds = 0, f32_seconds = 0;  // the same operation on the reference, on f32
};

// Backward reads no table: it runs on f32 only. In the suite, the element types run forward sum
// only, and the reference (for the speed-up) forward sum only.
bool runs_on(operation op, dtype type) { return type == dtype::f32 || is_forward(op); }
bool runs_in_suite(operation op, dtype type, isa which) {
  if (which == isa::reference) return op == operation::forward_sum && type == dtype::f32;
  return type == dtype::f32 || op == operation::forward_sum;
}
std::string short_name(dtype type) {
  for (const char* name : {"fp32", "fp16", "bf16", "int8", "int4"})
    if (dtype_from_string(name) == type) return name;
  return std::string(to_string(type));
}

// The names of --mode: the operations benchmarked.
constexpr std::pair<std::string_view, operation> operation_names[] = {
    {"sum", operation::forward_sum},       {"mean", operation::forward_mean},
    {"max", operation::forward_max},       {"weighted_sum", operation::forward_weighted_sum},
    {"lookup", operation::forward_lookup}, {"backward_dense", operation::backward_dense},
    {"backward_sparse", operation::backward_sparse}};

std::optional<operation> operation_from_string(std::string_view name) {
  for (const auto& [text, op] : operation_names)
    if (text == name) return op;
  return std::nullopt;
}

std::optional<distribution> distribution_from_string(std::string_view name) {
  if (name == "uniform") return distribution::uniform;
  if (name == "zipf") return distribution::zipf;
  return std::nullopt;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}


// What one workload runs: which operations on which element types and ISAs.
struct plan_of_runs {
  bool suite;
  bool runs(operation op, dtype type, isa which) const {
    return runs_on(op, type) && (!suite || runs_in_suite(op, type, which));
  }
};

// Every kernel's result on index set 0 against the reference's on the same table, bit for bit.
int verify(const workload& w, const bench_options& o, const plan_of_runs& runs) {
  int checked = 0;
  for (dtype type : o.types)
    for (operation op : o.ops) {
      if (!runs_on(op, type)) continue;
      std::optional<call_buffers> want;
      for (isa which : o.isas) {
        if (which == isa::reference || !runs.runs(op, type, which)) continue;
        if (!want) run_operation(op, w, 0, execution_for(isa::reference, 1), want.emplace(), type);
        call_buffers got;
        run_operation(op, w, 0, execution_for(which, 0), got, type);
        const bool same_dense = !want->dense_grad ||
            std::memcmp(want->dense_grad->row(0), got.dense_grad->row(0),
                        static_cast<std::size_t>(w.spec.rows * want->dense_grad->row_stride()) * sizeof(float)) == 0;
        const bool same = got.out == want->out && same_dense && got.sparse.rows == want->sparse.rows &&
                          got.sparse.values == want->sparse.values;
        if (!same) {
          std::fprintf(stderr, "embag bench: %s on %s %s, %s, DIFFERS from the reference\n", operation_name(op),
                       short_name(type).c_str(), std::string(to_string(which)).c_str(), w.spec.name().c_str());
          return -1;
        }
        ++checked;
      }
    }
  return checked;
}

// Times op on `which` over the table in `type`, each call followed by a roofline call on the same
// table and the index set half the rotation away: the rows a call has just read are in the caches
// (a 1 MiB set of 2,048 rows of 512 bytes fits in an LLC), and the roofline, timed on the kernel's
// own set, had read them there: one-index fp32 sums and lookups (R = 1M, D = 128, the Zen 3 guest)
// then showed 0.64-0.81 of it, 0.95-1.02 against rows that had waited as long as the kernel's.
result measure(operation op, dtype type, isa which, int threads, const workload& w, const roofline_runs& roofline,
               double budget) {
  call_buffers buffers;
  const int sets = static_cast<int>(w.sets.size());
  run_operation(op, w, 0, execution_for(which, threads), buffers, type);  // warm-up, sizes the buffers
  std::vector<double> kernel, roofline_times;
  const auto start = std::chrono::steady_clock::now();
  for (int call = 0; keep_timing(call, start, budget); ++call) {
    const int set = call % sets;
    auto t0 = std::chrono::steady_clock::now();
    run_operation(op, w, set, execution_for(which, threads), buffers, type);
    auto t1 = std::chrono::steady_clock::now();
    roofline.run((set + sets / 2) % sets);
    auto t2 = std::chrono::steady_clock::now();
    kernel.push_back(std::chrono::duration<double>(t1 - t0).count());
    roofline_times.push_back(std::chrono::duration<double>(t2 - t1).count());
  }
  double lookups = 0;
  for (int set = 0; set < sets; ++set) lookups += double(w.lookups(set)) / sets;
  return {w.spec, size_class(w.spec.table_bytes()), op, type, which, threads, median(kernel), median(roofline_times),
          roofline.prefetch(), lookups};
}

// Every result of one workload (verified first), with the reference's and f32's times filled in.
std::vector<result> run_workload(const workload_spec& spec, const bench_options& o, const plan_of_runs& runs,
                                 std::map<int, double>& sequential, int& verified) {
  std::fprintf(stderr, "%s: building the table and index sets...\n", spec.name().c_str());
  workload w(spec);
  for (dtype type : o.types) w.add(type);
  const int checked = verify(w, o, runs);
  if (checked < 0) throw error(errc::invalid_option, "bench: a kernel differs from the reference (see above)");
  verified += checked;
  std::fprintf(stderr, "%s: %s-resident, %.1f MiB, %d kernel results match the reference bit for bit\n",
               spec.name().c_str(), size_class(spec.table_bytes()).c_str(), double(spec.table_bytes()) / (1 << 20), checked);

  const isa best = available_isas().back();
  std::vector<result> results;
  for (int threads : o.threads) {
    if (!sequential.count(threads)) sequential[threads] = sequential_read_bytes_per_second(w, threads, best);
    for (dtype type : o.types) {
      const roofline_runs roofline(w, type, execution_for(best, threads, best_roofline_prefetch(w, threads, best, type)));
      for (operation op : o.ops)
        for (isa which : o.isas) {
          if (!runs.runs(op, type, which)) continue;
          if (which == isa::reference && threads != 1) continue;  // the reference is single-threaded
          std::fprintf(stderr, "  %s %s %s threads:%d\n", operation_name(op), short_name(type).c_str(),
                       std::string(to_string(which)).c_str(), threads);
          const double budget = which == isa::reference ? o.seconds_per_result / 3 : o.seconds_per_result;
          results.push_back(measure(op, type, which, threads, w, roofline, budget));
        }
    }
  }
  for (result& r : results)
    for (const result& other : results)
      if (other.op == r.op && other.type == r.type && other.which == isa::reference) r.reference_seconds = other.seconds;
      else if (other.op == r.op && other.which == r.which && other.threads == r.threads && other.type == dtype::f32)
        r.f32_seconds = other.seconds;
  return results;
}

// GB/s: the row bytes actually read (stored bytes); f32 GB/s: the fp32 bytes the same lookups
// stand for; roofline: the fraction of gather_roofline's speed on the same rows of the same table.
void print_table(const std::vector<result>& results, int threads) {
  std::printf("%-34s %-22s %-5s %-9s %9s %7s %8s %10s %6s %7s %8s\n", "workload", "operation", "dtype", "isa",
              "ms/call", "GB/s", "f32 GB/s", "Mlookups/s", "vs f32", "vs ref", "roofline");
  for (const result& r : results) {
    if (r.threads != threads) continue;
    const double lookups = r.lookups;
    const double stored = lookups * double(embag::row_bytes(r.type, r.spec.dim)), f32 = lookups * double(r.spec.dim) * 4;
    char vs_ref[16] = "-";
    if (r.reference_seconds > 0) std::snprintf(vs_ref, sizeof vs_ref, "%.1fx", r.reference_seconds / r.seconds);
    std::printf("%-34s %-22s %-5s %-9s %9.3f %7.2f %8.2f %10.1f %5.2fx %7s %8.2f\n", r.spec.name().c_str(),
                operation_name(r.op), short_name(r.type).c_str(), std::string(to_string(r.which)).c_str(),
                r.seconds * 1e3, stored / r.seconds / 1e9, f32 / r.seconds / 1e9, lookups / r.seconds / 1e6,
                r.f32_seconds / r.seconds, vs_ref, r.roofline_seconds / r.seconds);
  }
}

// The suite's one screen: per table class, distribution and bag length, at one thread count.
void print_summary(const std::vector<result>& results, int threads, isa best) {
  std::printf("\nsummary, %d thread%s, %s: speed ratios (above 1: the first is faster)\n", threads, threads > 1 ? "s" : "",
              std::string(to_string(best)).c_str());
  std::printf("%-5s %-8s %-4s %8s %7s %8s %9s %9s %9s %6s %6s %6s %6s\n", "class", "indices", "L", "of ideal", "vs ref",
              "max/sum", "mean/sum", "sum/bwd-d", "sum/bwd-s", "fp16", "bf16", "int8", "int4");
  std::vector<std::string> seen;
  for (const result& r : results) {
    const std::string key = r.spec.name();
    if (r.threads != threads || std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
    seen.push_back(key);
    const auto seconds_of = [&](operation op, dtype type) -> const result* {
      for (const result& x : results)
        if (x.spec.name() == key && x.threads == threads && x.op == op && x.type == type && x.which == best) return &x;
      return nullptr;
    };
    const result* sum = seconds_of(operation::forward_sum, dtype::f32);
    if (sum == nullptr) continue;
    const auto ratio = [&](const result* other) {
      char text[16] = "-";
      if (other != nullptr) std::snprintf(text, sizeof text, "%.2f", sum->seconds / other->seconds);
      return std::string(text);
    };
    const auto speedup = [&](const result* other) {  // other's speed over fp32 sum's
      char text[16] = "-";
      if (other != nullptr) std::snprintf(text, sizeof text, "%.2fx", sum->seconds / other->seconds);
      return std::string(text);
    };
    char ref[16] = "-";
    if (sum->reference_seconds > 0) std::snprintf(ref, sizeof ref, "%.0fx", sum->reference_seconds / sum->seconds);
    std::printf("%-5s %-8s %-4lld %8.2f %7s %8s %9s %9s %9s %6s %6s %6s %6s\n", r.table_class.c_str(),
                r.spec.dist == distribution::zipf ? "zipf" : "uniform", (long long)r.spec.pooling,
                sum->roofline_seconds / sum->seconds, ref, ratio(seconds_of(operation::forward_max, dtype::f32)).c_str(),
                ratio(seconds_of(operation::forward_mean, dtype::f32)).c_str(),
                ratio(seconds_of(operation::backward_dense, dtype::f32)).c_str(),
                ratio(seconds_of(operation::backward_sparse, dtype::f32)).c_str(),
                speedup(seconds_of(operation::forward_sum, dtype::f16)).c_str(),
                speedup(seconds_of(operation::forward_sum, dtype::bf16)).c_str(),
                speedup(seconds_of(operation::forward_sum, dtype::int8_rowwise)).c_str(),
                speedup(seconds_of(operation::forward_sum, dtype::int4_rowwise)).c_str());
  }
}

using json = nlohmann::ordered_json;  // the keys in the order written here, as Google Benchmark writes its own

// Google Benchmark's context: this machine and build.
json context_of(double sequential_read_bytes_per_second) {
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  return {{"executable", "embag bench"},
          {"host_name", std::string(host)},
          {"cpu_model", cpu_model()},
          {"num_cpus", sysconf(_SC_NPROCESSORS_ONLN)},
          {"caches", json::array({{{"type", "Data"}, {"level", 1}, {"size", caches().l1d}},
                                  {{"type", "Unified"}, {"level", 2}, {"size", caches().l2}},
                                  {{"type", "Unified"}, {"level", 3}, {"size", caches().llc}}})},
          {"library_build_type", "release"},
          {"embag_version", std::string(version())},
          {"sequential_read_bytes_per_second", sequential_read_bytes_per_second}};
}

// The JSON text of a report; a host or CPU name that is not UTF-8 is written with U+FFFD rather
// than failing the run.
std::string json_text(const json& benchmarks, double sequential_read_bytes_per_second) {
  return json{{"context", context_of(sequential_read_bytes_per_second)}, {"benchmarks", benchmarks}}.dump(
             2, ' ', false, json::error_handler_t::replace) +
         "\n";
}

// The results as Google Benchmark's JSON, with embag's own fields beside its own.
json benchmarks_of(const std::vector<result>& results) {
  json benchmarks = json::array();
  for (const result& r : results) {
    const std::string name = benchmark_name(operation_name(r.op), r.which, r.type, r.spec, r.threads);
    const double bytes = r.lookups * double(embag::row_bytes(r.type, r.spec.dim));
    benchmarks.push_back({{"name", name},
                          {"run_name", name},
                          {"run_type", "iteration"},
                          {"iterations", 1},
                          {"repetitions", 1},
                          {"real_time", r.seconds * 1e3},
                          {"cpu_time", r.seconds * 1e3},
                          {"time_unit", "ms"},
                          {"bytes_per_second", bytes / r.seconds},
                          {"f32_equivalent_bytes_per_second", r.lookups * double(r.spec.dim) * 4.0 / r.seconds},
                          {"speedup_vs_f32", r.f32_seconds > 0 ? r.f32_seconds / r.seconds : 0.0},
                          {"items_per_second", r.lookups / r.seconds},
                          {"roofline_fraction", r.roofline_seconds / r.seconds},
                          {"roofline_bytes_per_second", bytes / r.roofline_seconds},
                          {"speedup_vs_reference", r.reference_seconds > 0 ? r.reference_seconds / r.seconds : 0.0},
                          {"roofline_prefetch", prefetch_name(r.roofline_prefetch)},
                          {"size_class", r.table_class},
                          {"table_bytes", r.spec.table_bytes()}});
  }
  return benchmarks;
}

// The JSON file --json names, or the one --chart draws from: declared before the run (a path that
// cannot be written is an error before minutes of measuring) and written all or nothing.
struct json_output {
  std::string path;
  output_group files;
  explicit json_output(const bench_options& o)
      : path(!o.json_path.empty() || o.chart_path.empty() ? o.json_path : o.chart_path + ".json") {
    if (!path.empty()) files.writes(path, o.json_path.empty() ? "--chart" : "--json");
  }
  void write(const json& benchmarks, double sequential_read_bytes_per_second) {
    if (path.empty()) return;
    const std::string text = json_text(benchmarks, sequential_read_bytes_per_second);
    files.stage_bytes(path, {std::as_bytes(std::span(text.data(), text.size()))});
    files.commit();
    std::printf("\nwrote %s\n", path.c_str());
  }
};

// The suite's workloads: per table class, rows sized from this machine's caches (half of L2, half
// of the LLC, and at least four times the LLC and 1M rows), uniform and zipf, L = 40 and L = 1.
std::vector<workload_spec> suite_workloads(const bench_options& o) {
  const std::int64_t row = o.spec.dim * 4, l2 = caches().l2 > 0 ? caches().l2 : std::int64_t{1} << 20,
                     llc = caches().llc > 0 ? caches().llc : std::int64_t{32} << 20;
  std::vector<workload_spec> specs;
  for (const std::string& table_class : o.classes) {
    const std::int64_t rows = table_class == "cache" ? l2 / 2 / row
                              : table_class == "LLC" ? llc / 2 / row
                                                     : std::max<std::int64_t>(1'000'000, 4 * llc / row + 1);
    for (distribution dist : {distribution::uniform, distribution::zipf})
      for (std::int64_t pooling : {40, 1}) {
        workload_spec spec = o.spec;
        spec.rows = std::max<std::int64_t>(rows, 16);
        spec.dist = dist;
        spec.pooling = pooling;
        specs.push_back(spec);
      }
  }
  return specs;
}

// tools/plot_bench.py on the results' JSON, when python3 has matplotlib.
void draw_chart(const bench_options& o, const std::string& json) {
  const std::string command = "python3 '" + std::string(EMBAG_PLOT_SCRIPT) + "' '" + json + "' -o '" + o.chart_path + "'";
  if (std::system(command.c_str()) != 0)
    std::fprintf(stderr, "embag bench: no chart (tools/plot_bench.py failed: is python3-matplotlib installed?)\n");
  else
    std::printf("wrote %s\n", o.chart_path.c_str());
}

// MLPerf's DLRM-DCNv2 (Criteo 1TB click logs): its 26 tables' published row counts and multi-hot
// sizes (the indices per bag), D = 128.
constexpr std::int64_t dlrm_rows[] = {40000000, 39060, 17295, 7424,    20265,    3,        7122,     1543,  63,
                                      40000000, 3067956, 405282, 10,  2209,     11938,    155,      4,     976,
                                      14,       40000000, 40000000, 40000000, 590152, 12973, 108,   36};
constexpr std::int64_t dlrm_hot[] = {3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1};
static_assert(std::size(dlrm_rows) == 26 && std::size(dlrm_hot) == 26);
// Rows kept per table at --scale 1: five 40M-row tables of 512-byte rows are 100 GB; capped, the 26
// take about 3.6 GB in fp32 (and 1 GB more in int8).
constexpr std::int64_t dlrm_row_cap = 1'000'000;

// One DLRM table's workload: capped rows, Zipf ids, its multi-hot size per bag.
workload_spec dlrm_table(const bench_options& o, std::size_t t) {
  workload_spec spec = o.spec;
  spec.rows = std::min(dlrm_rows[t], std::max<std::int64_t>(1, std::llround(double(dlrm_row_cap) * o.scale)));
  spec.pooling = dlrm_hot[t];
  spec.dist = distribution::zipf;
  spec.index_sets = 4;
  spec.seed = 1000 + t;
  return spec;
}

struct dlrm_result {
  dtype type;
  int threads;
  // seconds per call (medians, each variant run in turn first): forward_batched (into fp32
  // outputs), the loop of single calls, the ideal loops, forward_batched into f16 and bf16 outputs
  double batched, loop, ideal, f16_out, bf16_out;
  double backward_sparse;  // backward_sparse_batched (f32 rows only: backward reads no table), or 0
};

// One index set of every table, at a thread count: the batched call's tables side by side in one
// B x 26D output, the single calls' and the ideal loops' in the same places.
struct dlrm_call {
  std::vector<table_lookup> tables, tables_f16, tables_bf16;  // into f32, f16 and bf16 outputs
  std::vector<gather_roofline> ideal;
  std::vector<table_gradient> gradients;  // dY: the output's columns
};

// Each table's execution for the DLRM workload's ideal loop: the best of the roofline's prefetch
// sweep for that table, timed in the sequence of all the tables into `out` (their columns). Automatic
// resolves, before forward's trials have decided, to a setting with which the int8 tables' ideal
// took 1.2x the batched call's time; and a table timed alone found its hot rows in the caches that
// the others flush, its best there making the fp32 ideal 1.04-1.10x the batched call's time.
std::vector<execution> dlrm_ideal_executions(const std::vector<workload>& tables, dtype type, int threads, isa which, float* out) {
  constexpr int rounds = 7;
  const std::int64_t bags = tables.front().spec.bags, dim = tables.front().spec.dim, cols = dim * std::ssize(tables);
  const int sets = tables.front().spec.index_sets;
  std::vector<double> best_seconds(tables.size(), 1e30);
  std::vector<execution> best(tables.size());
  for (const prefetch_setting& setting : roofline_prefetch_sweep()) {
    const execution how = execution_for(which, threads, setting);
    std::vector<std::vector<gather_roofline>> by_set(static_cast<std::size_t>(sets));
    for (int set = 0; set < sets; ++set)
      for (std::size_t t = 0; t < tables.size(); ++t)
        by_set[set].emplace_back(tables[t].table_in(type), tables[t].batch(set),
                                 matrix_view<float>{out + static_cast<std::int64_t>(t) * dim, bags, dim, cols}, how);
    std::vector<std::vector<double>> seconds(tables.size());
    for (int round = 0; round < rounds; ++round)
      for (std::size_t t = 0; t < tables.size(); ++t) {
        const auto start = std::chrono::steady_clock::now();
        by_set[static_cast<std::size_t>(round % sets)][t].run();
        seconds[t].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
    for (std::size_t t = 0; t < tables.size(); ++t)
      if (const double s = median(seconds[t]); s < best_seconds[t]) {
        best_seconds[t] = s;
        best[t] = how;
      }
  }
  return best;
}

// The DLRM workload: forward_batched against the loop of single-table calls on the same work and
// against the sum of the tables' ideal loops (gather_roofline, the minimal gather each), per
// element type and thread count, interleaved call by call; the batched call's outputs first
// checked bit for bit against the single calls'.
int run_dlrm_bench(const bench_options& o) {
  json_output report(o);
  std::printf("embag %s bench --workload dlrm on %s, L2 %lld KiB, LLC %lld MiB\n", std::string(version()).c_str(),
              cpu_model().c_str(), (long long)(caches().l2 >> 10), (long long)(caches().llc >> 20));
  std::vector<workload> tables;
  std::int64_t bytes = 0, lookups = 0;
  for (std::size_t t = 0; t < std::size(dlrm_rows); ++t) {
    tables.emplace_back(dlrm_table(o, t));
    for (dtype type : o.types) tables.back().add(type);
    bytes += tables.back().spec.table_bytes();
    lookups += tables.back().lookups(0);
  }
  const std::int64_t bags = o.spec.bags, dim = o.spec.dim, cols = dim * std::ssize(tables);
  std::printf("26 tables (MLPerf DLRM-DCNv2), rows capped at %lld (--scale %g), %.2f GB in fp32, D = %lld, B = %lld, "
              "Zipf ids (exponent %.2f), %lld lookups per call; ISA %s\n",
              (long long)tables.front().spec.rows, o.scale, double(bytes) / 1e9, (long long)dim, (long long)bags,
              o.spec.zipf_exponent, (long long)lookups, std::string(to_string(o.isas.back())).c_str());
  const int sets = tables.front().spec.index_sets;
  // An output per timed forward: a variant writing where the one before it had just written found
  // its output lines in the caches, and one writing after a 16-bit output's call did not (the loop
  // of single calls ran after the batched call: 0.88-0.92x the loop at 1 thread, 0.98-0.99x with the
  // bytes shared by all). Apart, each finds its own output as the last round left it.
  const auto size = static_cast<std::size_t>(bags * cols);
  std::vector<float> out(size), single(size), ideal_out(size);
  std::vector<std::uint16_t> out_f16(size), out_bf16(size);
  workspace scratch;
  std::vector<dlrm_result> results;
  for (int threads : o.threads)
    for (dtype type : o.types) {
      const execution how = execution_for(o.isas.back(), threads);
      const std::vector<execution> ideal_how = dlrm_ideal_executions(tables, type, threads, o.isas.back(), ideal_out.data());
      std::vector<dlrm_call> calls(static_cast<std::size_t>(sets));
      for (int set = 0; set < sets; ++set) {
        for (const workload& w : tables) calls[set].tables.push_back({w.table_in(type), w.batch(set), {}, {}});
        concatenate_outputs(calls[set].tables, {out.data(), bags, cols, cols});
        calls[set].tables_f16 = calls[set].tables_bf16 = calls[set].tables;
        concatenate_outputs(calls[set].tables_f16, {out_f16.data(), bags, cols, cols, dtype::f16});
        concatenate_outputs(calls[set].tables_bf16, {out_bf16.data(), bags, cols, cols, dtype::bf16});
        for (std::size_t t = 0; t < tables.size(); ++t) {
          calls[set].ideal.emplace_back(tables[t].table_in(type), tables[t].batch(set),
                                        matrix_view<float>{ideal_out.data() + t * dim, bags, dim, cols}, ideal_how[t]);
          calls[set].gradients.push_back({tables[t].spec.rows, tables[t].batch(set), {},
                                          {out.data() + t * dim, bags, dim, cols}, {}});
        }
      }
      const bool with_backward = type == dtype::f32;
      std::vector<sparse_gradient> grads(tables.size());
      const auto run_single_calls = [&](const dlrm_call& call, float* into) {
        options opts;
        opts.execution = how;
        for (std::size_t t = 0; t < call.tables.size(); ++t)
          forward(call.tables[t].table, call.tables[t].batch, opts, {into + t * dim, bags, dim, cols});
      };
      forward_batched(calls[0].tables, how, &scratch);
      run_single_calls(calls[0], single.data());
      if (out != single) throw error(errc::invalid_option, "bench: forward_batched differs from the single calls");
      // The variants timed: the five forwards each in turn first, then the backward (on their
      // output). Order matters both ways: whichever runs after another forward finds its hot (Zipf)
      // rows in the caches, and whichever runs after the backward finds them flushed by its
      // gradients; a rotation over all six put the batched call after the backward in five calls
      // of six (0.56-0.78x the loop at B = 128, against 1.0x for the same calls timed apart).
      const std::function<void(const dlrm_call&)> variants[] = {
          [&](const dlrm_call& c) { forward_batched(c.tables, how, &scratch); },
          [&](const dlrm_call& c) { run_single_calls(c, single.data()); },
          [&](const dlrm_call& c) {
            for (const gather_roofline& g : c.ideal) g.run();
          },
          [&](const dlrm_call& c) { forward_batched(c.tables_f16, how, &scratch); },
          [&](const dlrm_call& c) { forward_batched(c.tables_bf16, how, &scratch); },
          [&](const dlrm_call& c) { backward_sparse_batched(c.gradients, grads, how, &scratch); },
      };
      constexpr int forwards = 5;
      std::vector<double> seconds[forwards + 1];
      const auto start = std::chrono::steady_clock::now();
      for (int call = 0; keep_timing(call, start, o.seconds_per_result * 3); ++call)
        for (int k = 0; k <= forwards; ++k) {
          const int which = k < forwards ? (call + k) % forwards : forwards;
          if (which == forwards && !with_backward) break;
          const auto u0 = std::chrono::steady_clock::now();
          variants[which](calls[static_cast<std::size_t>(call % sets)]);
          seconds[which].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - u0).count());
        }
      const auto median_of = [&](int which) { return seconds[which].empty() ? 0.0 : median(seconds[which]); };
      results.push_back({type, threads, median_of(0), median_of(1), median_of(2), median_of(3), median_of(4), median_of(5)});
    }
  std::printf("verified: the batched call's outputs match the single calls' bit for bit\n\n");
  std::printf("%-5s %-7s %11s %11s %11s %9s %9s %14s %9s %9s\n", "dtype", "threads", "batched ms", "loop ms",
              "ideal ms", "vs loop", "of ideal", "bwd-sparse/fwd", "f16-out", "bf16-out");
  json benchmarks = json::array();
  for (const dlrm_result& r : results) {
    char backward[16] = "-";
    if (r.backward_sparse > 0) std::snprintf(backward, sizeof backward, "%.2f", r.backward_sparse / r.batched);
    std::printf("%-5s %-7d %11.3f %11.3f %11.3f %8.2fx %9.2f %14s %8.3fx %8.3fx\n", short_name(r.type).c_str(),
                r.threads, r.batched * 1e3, r.loop * 1e3, r.ideal * 1e3, r.loop / r.batched, r.ideal / r.batched, backward,
                r.f16_out / r.batched, r.bf16_out / r.batched);
    for (const auto& [family, seconds] :
         {std::pair{"dlrm/batched", r.batched}, std::pair{"dlrm/single_calls", r.loop}, std::pair{"dlrm/ideal", r.ideal},
          std::pair{"dlrm/backward_sparse_batched", r.backward_sparse}, std::pair{"dlrm/batched_f16_out", r.f16_out},
          std::pair{"dlrm/batched_bf16_out", r.bf16_out}}) {
      if (seconds == 0) continue;
      const std::string name = std::string(family) + "/" + std::string(to_string(o.isas.back())) + "/" +
                               std::string(to_string(r.type)) + "/scale:" + std::to_string(o.scale) +
                               "/threads:" + std::to_string(r.threads);
      benchmarks.push_back({{"name", name}, {"run_name", name}, {"run_type", "iteration"}, {"iterations", 1},
                            {"repetitions", 1}, {"real_time", seconds * 1e3}, {"cpu_time", seconds * 1e3},
                            {"time_unit", "ms"}, {"items_per_second", double(lookups) / seconds},
                            {"speedup_vs_single_calls", r.loop / seconds}, {"ideal_fraction", r.ideal / seconds}});
    }
  }
  report.write(benchmarks, 0.0);
  return 0;
}

// The optimizer report: per index distribution (the workload's, or uniform and zipf), thread count
// and optimizer, on rotating index sets, a training step three ways interleaved call by call:
// backward_sparse alone (the gradient, no update), the fused step (backward_update) and the
// unfused one (backward_sparse, then apply_sparse_gradient on its rows); then, interleaved on
// their own, update_roofline's four ways to bring the rows in (the step's own, none, the chunk's
// loads first, the next chunk's prefetches; each way's chunk: EMBAG_PREFETCH in the README), the
// best of which is the roofline: the step's table and state rows read and written back, nothing
// else, the least any step costs.
// The fused and unfused steps are first checked to leave the same table and state bit for bit.
int run_optimizer_bench(const bench_options& o) {
  json_output report(o);
  const isa which = o.isas.back();
  std::printf("embag %s bench --mode %s on %s, L2 %lld KiB, LLC %lld MiB, ISA %s\n", std::string(version()).c_str(),
              [&] {
                std::string names;
                for (optimizer_kind k : o.optimizers) names += (names.empty() ? "" : ",") + std::string(to_string(k));
                return names;
              }().c_str(),
              cpu_model().c_str(), (long long)(caches().l2 >> 10), (long long)(caches().llc >> 20),
              std::string(to_string(which)).c_str());
  std::vector<distribution> dists{o.spec.dist};
  if (o.suite) dists = {distribution::uniform, distribution::zipf};
  std::printf("R = %lld, D = %lld, L = %lld%s, B = %lld, %d rotating index sets; the step's time over backward_sparse "
              "alone (fused/bwd),\nthe roofline's (roof: the step's rows read and written back, nothing else, the best "
              "of four ways to bring them in) over backward_sparse's and the step's over it,\nand the unfused step's over the fused one (unfused/fused)\n",
              (long long)o.spec.rows, (long long)o.spec.dim, (long long)o.spec.pooling, o.spec.variable_length ? " (variable)" : "",
              (long long)o.spec.bags, o.spec.index_sets);
  std::printf("\n%-8s %-7s %-16s %9s %9s %11s %8s %-9s %10s %9s %11s %14s\n", "ids", "threads", "optimizer", "bwd ms",
              "fused ms", "unfused ms", "roof ms", "roof via", "fused/bwd", "roof/bwd", "fused/roof", "unfused/fused");
  json benchmarks = json::array();
  for (const distribution dist : dists) {
    workload_spec spec = o.spec;
    spec.dist = dist;
    workload w(spec);
    const std::int64_t rows = spec.rows, dim = spec.dim;
    std::vector<float> dy(static_cast<std::size_t>(spec.bags * dim));
    for (std::size_t i = 0; i < dy.size(); ++i) dy[i] = static_cast<float>(static_cast<int>(i * 2654435761u % 2001) - 1000) * 1e-3f;
    const matrix_view<const float> grad_output{dy.data(), spec.bags, dim, dim};
    table adagrad_state(rows, dim);
    std::vector<float> rowwise_state(static_cast<std::size_t>(rows));
    const auto state_for = [&](optimizer_kind k) -> optimizer_state {
      if (k == optimizer_kind::adagrad) return {adagrad_state.view().data, rows, dim, adagrad_state.row_stride()};
      if (k == optimizer_kind::rowwise_adagrad) return {rowwise_state.data(), rows, 1, 1};
      return {};
    };
    workspace scratch;
    sparse_gradient grad;
    for (const int threads : o.threads)
      for (const optimizer_kind kind : o.optimizers) {
        options opts;
        opts.execution = execution_for(which, threads);
        const optimizer opt{.kind = kind, .learning_rate = 1e-3f, .eps = 1e-8f};
        const trainable_table_view trained = w.rows_table.view();
        const auto fused = [&](int set) {
          backward_update(trained, w.batch(set), opts, grad_output, opt, state_for(kind), {}, &scratch);
        };
        const auto unfused = [&](int set) {
          backward_sparse(rows, w.batch(set), opts, grad_output, grad, {}, &scratch);
          apply_sparse_gradient(trained, grad, opt, state_for(kind), opts.execution, &scratch);
        };
        {  // fused and unfused from the same table and state leave the same bits
          const std::int64_t bytes = rows * w.rows_table.row_stride() * 4;
          const auto snapshot = [&] {
            std::vector<float> copy(static_cast<std::size_t>(bytes / 4));
            std::memcpy(copy.data(), w.rows_table.view().data, static_cast<std::size_t>(bytes));
            const optimizer_state s = state_for(kind);
            std::vector<float> state(s.data ? static_cast<std::size_t>(s.rows * s.row_stride) : 0);
            if (s.data) std::memcpy(state.data(), s.data, state.size() * 4);
            return std::pair{std::move(copy), std::move(state)};
          };
          const auto before = snapshot();
          fused(0);
          const auto after_fused = snapshot();
          std::memcpy(w.rows_table.view().data, before.first.data(), static_cast<std::size_t>(bytes));
          if (state_for(kind).data) std::memcpy(state_for(kind).data, before.second.data(), before.second.size() * 4);
          unfused(0);
          if (snapshot() != after_fused)
            throw error(errc::invalid_option, "bench: the fused step differs from backward_sparse + apply_sparse_gradient");
        }
        // per way of bringing the rows in, one per index set, built (validated, transposed) before timing
        constexpr prefetch_level roofline_fetches[] = {prefetch_level::automatic, prefetch_level::none, prefetch_level::l1,
                                                       prefetch_level::l2};
        constexpr const char* roofline_fetch_names[] = {"step's", "none", "loads", "prefetch"};
        std::vector<update_roofline> rooflines[std::size(roofline_fetches)];
        for (std::size_t f = 0; f < std::size(roofline_fetches); ++f) {
          options fetching = opts;
          fetching.execution.prefetch = {roofline_fetches[f], 0};
          for (int set = 0; set < spec.index_sets; ++set)
            rooflines[f].emplace_back(trained, w.batch(set), fetching, grad_output, opt, state_for(kind));
        }
        const auto roofline = [&](std::size_t f) {
          return [&, f](int set) { rooflines[f][static_cast<std::size_t>(set)].run(); };
        };
        // The step three ways interleaved, then the rooflines interleaved on their own: timed among
        // the step's calls (each roofline dirties every row the step touches), backward_sparse ran
        // 20-40% slower (5.3-6.3 ms against 4.1-4.5 on the Xeon guest, uniform, 1 thread), which
        // flattered fused/bwd.
        const auto interleaved = [&](std::span<const std::function<void(int)>> variants, std::vector<double>* seconds) {
          const auto count = static_cast<int>(variants.size());
          const auto start = std::chrono::steady_clock::now();
          for (int call = 0; keep_timing(call, start, o.seconds_per_result * count); ++call)
            for (int k = 0; k < count; ++k) {
              const int variant = (call + k) % count;
              const auto t0 = std::chrono::steady_clock::now();
              variants[static_cast<std::size_t>(variant)](call % spec.index_sets);
              seconds[variant].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            }
        };
        const std::function<void(int)> steps[] = {
            [&](int set) { backward_sparse(rows, w.batch(set), opts, grad_output, grad, {}, &scratch); }, fused, unfused};
        const std::function<void(int)> ceilings[] = {roofline(0), roofline(1), roofline(2), roofline(3)};
        std::vector<double> seconds[std::size(steps) + std::size(ceilings)];
        interleaved(steps, seconds);
        interleaved(ceilings, seconds + std::size(steps));
        const double backward = median(seconds[0]), step = median(seconds[1]), separate = median(seconds[2]);
        std::size_t best = 0;
        for (std::size_t f = 1; f < std::size(roofline_fetches); ++f)
          if (median(seconds[3 + f]) < median(seconds[3 + best])) best = f;
        const double roof = median(seconds[3 + best]);
        const char* ids = dist == distribution::uniform ? "uniform" : "zipf";
        std::printf("%-8s %-7d %-16s %9.3f %9.3f %11.3f %8.3f %-9s %9.2fx %8.2fx %10.2fx %13.2fx\n", ids, threads,
                    std::string(to_string(kind)).c_str(), backward * 1e3, step * 1e3, separate * 1e3, roof * 1e3,
                    roofline_fetch_names[best], step / backward, roof / backward, step / roof, separate / step);
        std::fflush(stdout);
        for (const auto& [family, t] : {std::pair{"optim/backward_sparse", backward}, std::pair{"optim/fused", step},
                                         std::pair{"optim/unfused", separate}, std::pair{"optim/roofline", roof}}) {
          const std::string name = std::string(family) + "/" + std::string(to_string(kind)) + "/" +
                                   std::string(to_string(which)) + "/" + spec.name() + "/threads:" + std::to_string(threads);
          benchmarks.push_back({{"name", name}, {"run_name", name}, {"run_type", "iteration"}, {"iterations", 1},
                                {"repetitions", 1}, {"real_time", t * 1e3}, {"cpu_time", t * 1e3}, {"time_unit", "ms"},
                                {"items_per_second", double(w.lookups(0)) / t}});
        }
      }
  }
  std::printf("verified: each fused step leaves the table and state of backward_sparse + apply_sparse_gradient, bit for bit\n");
  report.write(benchmarks, 0.0);
  return 0;
}

int run_bench(const bench_options& o) {
  if (o.dlrm) return run_dlrm_bench(o);
  if (!o.optimizers.empty()) return run_optimizer_bench(o);
  json_output report(o);
  std::printf("embag %s bench on %s, %d threads, L2 %lld KiB, LLC %lld MiB\n", std::string(version()).c_str(),
              cpu_model().c_str(), default_threads(), (long long)(caches().l2 >> 10), (long long)(caches().llc >> 20));
  const std::vector<workload_spec> specs = o.suite ? suite_workloads(o) : std::vector<workload_spec>{o.spec};
  std::printf("%zu workload%s, B=%lld bags, %d rotating index sets each\n", specs.size(), specs.size() > 1 ? "s" : "",
              (long long)o.spec.bags, o.spec.index_sets);
  std::fflush(stdout);

  const plan_of_runs runs{o.suite};
  std::vector<result> results;
  std::map<int, double> sequential;  // of the first workload, per thread count
  int verified = 0;
  for (const workload_spec& spec : specs) {
    std::vector<result> more = run_workload(spec, o, runs, sequential, verified);
    results.insert(results.end(), more.begin(), more.end());
  }
  std::printf("verified: %d kernel results match the reference bit for bit\n", verified);
  if (o.suite)
    for (int threads : o.threads) print_summary(results, threads, o.isas.back());
  for (int threads : o.threads) {
    std::printf("\nthreads: %d   sequential read %.1f GB/s (%s)\n", threads, sequential[threads] / 1e9,
                specs.front().name().c_str());
    print_table(results, threads);
  }
  report.write(benchmarks_of(results), sequential.empty() ? 0.0 : sequential.begin()->second);
  if (!o.chart_path.empty()) draw_chart(o, report.path);
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& tool, command_run& run) {
  const auto o = std::make_shared<bench_options>();
  const int all = default_threads();
  o->threads = all > 1 ? std::vector<int>{1, all} : std::vector<int>{1};
  CLI::App& bench = *tool.add_subcommand("bench", "The cross-ISA benchmark report; every kernel is verified against the "
                                                  "reference, bit for bit, first.");

  CLI::Option_group& suite = *bench.add_option_group(
      "Suite", "With no workload option: the suite, on the best ISA (and the reference for the speed-up):\n"
               "  tables within L2, within the LLC and past it (sized from this machine's caches), D = 128,\n"
               "  uniform and zipf indices, L = 40 and L = 1, 2048 bags; a one-screen summary, then every result.");
  suite.add_option("--classes", o->classes, "the suite's table classes, of cache,LLC,DRAM (default: all three)")
      ->type_name("LIST")
      ->delimiter(',')
      ->check([](const std::string& name) {
        return name == "cache" || name == "LLC" || name == "DRAM" ? std::string()
                                                                  : "unknown table class '" + name + "' (cache, LLC, DRAM)";
      });

  CLI::Option_group& workload = *bench.add_option_group("Workload", "A workload option runs that one workload on every "
                                                                    "ISA instead.");
  const CLI::Validator positive = number<std::int64_t>("a positive integer", [](std::int64_t n) { return n > 0; });
  workload.add_option("--rows", o->spec.rows, "table rows (default 1000000)")->type_name("R")->transform(positive);
  workload.add_option("--dim", o->spec.dim, "row length (default 128)")->type_name("D")->transform(positive);
  workload.add_option("--pooling", o->spec.pooling, "indices per bag (default 40)")->type_name("L")->transform(positive);
  workload.add_option("--bags", o->spec.bags, "bags per call (default 2048)")->type_name("B")->transform(positive);
  workload.add_option("--dist", o->spec.dist, "the index distribution, uniform or zipf (exponent 1.05)")
      ->type_name("DIST")
      ->transform(name_of("distribution", distribution_from_string, "uniform, zipf"));
  workload.add_flag("--variable", o->spec.variable_length, "bag lengths uniform in [1, 2L-1]");

  CLI::Option_group& dlrm = *bench.add_option_group(
      "Table-batched", "--workload dlrm: MLPerf DLRM-DCNv2's 26 tables (rows capped at 1000000 x --scale), Zipf ids,\n"
                       "  its multi-hot sizes, B = --bags; forward_batched against the loop of single-table calls and\n"
                       "  against the tables' ideal loops, and backward_sparse_batched against the batched forward,\n"
                       "  on the best ISA (default element types fp32 and int8).");
  CLI::Option* dlrm_workload =
      dlrm.add_option("--workload", o->dlrm, "the table-batched workload: dlrm")
          ->type_name("NAME")
          ->transform(CLI::Validator(
              [](std::string& name) {
                if (name != "dlrm") return "unknown workload '" + name + "' (dlrm)";
                name = "true";
                return std::string();
              },
              ""));
  dlrm.add_option("--scale", o->scale, "the DLRM tables' row cap, times this (default 1)")
      ->type_name("X")
      ->needs(dlrm_workload)
      ->transform(number<double>("a positive number", [](double s) { return s > 0 && std::isfinite(s); }));

  CLI::Option_group& runs = *bench.add_option_group("Runs", "What runs, in the suite or the workload.");
  runs.add_option("--threads", o->threads, "comma-separated thread counts, or all (default: 1 and all)")
      ->type_name("LIST")
      ->delimiter(',')
      ->transform(CLI::Validator(
          [all, count = number<int>("a positive count or all", [](int n) { return n > 0; })](std::string& text) {
            if (text == "all") text = std::to_string(all);
            return count(text);
          },
          ""));
  CLI::Option* isas = runs.add_option("--isa", o->isas, "comma-separated ISAs, of " + isa_names +
                                                             "\n(default: every one this CPU has, and the reference)")
                          ->type_name("LIST")
                          ->delimiter(',')
                          ->transform(name_of("ISA", isa_from_string, isa_names));
  std::string operations;
  for (const auto& [name, op] : operation_names) operations += (operations.empty() ? "" : ", ") + std::string(name);
  std::string optimizers;
  for (const optimizer_kind k : all_optimizers) optimizers += (optimizers.empty() ? "" : ", ") + std::string(to_string(k));
  CLI::Option* modes =
      runs.add_option("--mode", o->modes, "comma-separated operations, of\n" + operations +
                                              "\n(default: all but lookup); or optimizers, of\n" + optimizers +
                                              "\n(their own report: a training step against backward_sparse)")
          ->type_name("LIST")
          ->delimiter(',')
          ->check([operations, optimizers](const std::string& name) {
            return operation_from_string(name) || optimizer_from_string(name)
                       ? std::string()
                       : "unknown mode '" + name + "' (" + operations + "; or " + optimizers + ")";
          });
  CLI::Option* types = runs.add_option("--dtype", o->types, "comma-separated table element types, of\n" + dtype_names +
                                           "\n(default: all; backward runs on f32 only)")
      ->type_name("LIST")
      ->delimiter(',')
      ->transform(name_of("dtype", dtype_from_string, dtype_names));
  runs.add_option("--seconds", o->seconds_per_result, "the time budget per result (default 0.3)")
      ->type_name("S")
      ->transform(number<double>("a positive number", [](double s) { return s > 0 && std::isfinite(s); }));

  CLI::Option_group& outputs = *bench.add_option_group("Outputs");
  // --chart runs the plot script through the shell, the paths in quotes
  const auto no_quote = [](const std::string& path) {
    return path.find('\'') == std::string::npos ? std::string() : "may not hold a quote: '" + path + "'";
  };
  add_file(outputs, "--json", o->json_path, "FILE", "write the results as Google Benchmark JSON")->check(no_quote);
  add_file(outputs, "--chart", o->chart_path, "FILE", "draw them as a PNG with tools/plot_bench.py (needs "
                                                      "python3-matplotlib)")
      ->check(no_quote);

  bench.callback([o, &workload, isas, types, modes, &run] {
    if (modes->count() > 0) {
      o->ops.clear();
      for (const std::string& name : o->modes) {
        if (const std::optional<operation> op = operation_from_string(name)) o->ops.push_back(*op);
        else o->optimizers.push_back(*optimizer_from_string(name));
      }
      if (!o->ops.empty() && !o->optimizers.empty())
        throw CLI::ValidationError("--mode", "optimizers run their own report: give them without operations");
    }
    if (o->dlrm && (workload.count_all() - (workload.count("--bags") > 0 ? 1 : 0)) > 0)
      throw CLI::ValidationError("--workload dlrm", "sets its own tables: of the workload options, only --bags applies");
    o->suite = workload.count_all() == 0 && !o->dlrm;
    if (!o->optimizers.empty() && o->dlrm)
      throw CLI::ValidationError("--mode", "optimizers run on one table: not with --workload dlrm");
    if (o->dlrm && types->count() == 0) o->types = {dtype::f32, dtype::int8_rowwise};
    if (isas->count() == 0) {
      o->isas = o->suite ? std::vector<isa>{isa::reference, available_isas().back()} : available_isas();
    } else {  // the reference runs first, whatever the list: the speed-ups are over it
      std::erase(o->isas, isa::reference);
      o->isas.insert(o->isas.begin(), isa::reference);
    }
    run = [o] { return run_bench(*o); };
  });
}

}  // namespace embag::tool
