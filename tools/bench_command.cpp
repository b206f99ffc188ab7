// `embag bench`: the cross-ISA benchmark report on a built-in DLRM-like workload (or one given by
// options). Verifies every kernel against the reference first, then times each operation on each
// ISA and element type (forward on the fp32 table and on its fp16, bf16, int8 and int4 copies),
// interleaving every call with a roofline call (the same rows of the same table read with the best
// prefetch), so each result is reported as a fraction of what the memory system delivered in the
// same run.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "commands.hpp"
#include "workload.hpp"

namespace embag::tool {
namespace {

using namespace embag::bench;

struct bench_options {
  workload_spec spec;
  std::vector<int> threads;  // thread counts to run
  std::vector<isa> isas;
  std::vector<operation> ops = {operation::forward_sum, operation::forward_mean, operation::forward_max,
                                operation::forward_weighted_sum, operation::backward_dense,
                                operation::backward_sparse};
  std::vector<dtype> types = {dtype::f32, dtype::f16, dtype::bf16, dtype::int8_rowwise, dtype::int4_rowwise};
  std::string json_path;
  double seconds_per_result = 0.3;
};

struct result {
  operation op;
  dtype type;
  isa which;
  int threads;
  double seconds, roofline_seconds;
  prefetch_setting roofline_prefetch;
  double reference_seconds = 0, f32_seconds = 0;  // the same operation on the reference, on f32
};

// Backward reads no table: it runs on f32 only.
bool runs_on(operation op, dtype type) { return type == dtype::f32 || is_forward(op); }

std::string short_name(dtype type) {
  for (const char* name : {"fp32", "fp16", "bf16", "int8", "int4"})
    if (dtype_from_name(name) == type) return name;
  return std::string(to_string(type));
}

[[noreturn]] void bad_usage(const std::string& message) {
  throw error(errc::invalid_option, "bench: " + message + " (see embag bench --help)");
}

std::int64_t parse_count(const std::string& flag, const char* text) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || v <= 0) bad_usage(flag + " wants a positive integer, got '" + text + "'");
  return v;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');) parts.push_back(part);
  return parts;
}

const char* bench_help =
    "usage: embag bench [options]\n"
    "  --rows R          table rows (default 1000000)\n"
    "  --dim D           row length (default 128)\n"
    "  --pooling L       indices per bag (default 40)\n"
    "  --bags B          bags per call (default 2048)\n"
    "  --dist uniform|zipf   index distribution (zipf exponent 1.05)\n"
    "  --variable        bag lengths uniform in [1, 2L-1]\n"
    "  --threads LIST    comma-separated thread counts (default: 1 and all)\n"
    "  --isa LIST        comma-separated ISAs (default: every available one and reference)\n"
    "  --mode LIST       of sum,mean,max,weighted_sum,lookup,backward_dense,backward_sparse\n"
    "  --dtype LIST      table element types of fp32,fp16,bf16,int8,int4 (default: all; backward\n"
    "                    runs on fp32 only)\n"
    "  --seconds S       time budget per result (default 0.3)\n"
    "  --json FILE       write the results as Google Benchmark JSON\n";

bench_options parse(int argc, char** argv) {
  bench_options o;
  const int all = default_threads();
  o.threads = all > 1 ? std::vector<int>{1, all} : std::vector<int>{1};
  o.isas = available_isas();
  for (int i = 0; i < argc; ++i) {
    const std::string flag = argv[i];
    const auto value = [&]() -> const char* {
      if (i + 1 >= argc) bad_usage(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--rows") o.spec.rows = parse_count(flag, value());
    else if (flag == "--dim") o.spec.dim = parse_count(flag, value());
    else if (flag == "--pooling") o.spec.pooling = parse_count(flag, value());
    else if (flag == "--bags") o.spec.bags = parse_count(flag, value());
    else if (flag == "--variable") o.spec.variable_length = true;
    else if (flag == "--dist") {
      const std::string d = value();
      if (d != "uniform" && d != "zipf") bad_usage("--dist is uniform or zipf, got '" + d + "'");
      o.spec.dist = d == "zipf" ? distribution::zipf : distribution::uniform;
    } else if (flag == "--threads") {
      o.threads.clear();
      for (const std::string& t : split(value())) o.threads.push_back(t == "all" ? all : static_cast<int>(parse_count(flag, t.c_str())));
    } else if (flag == "--isa") {
      o.isas = {isa::reference};
      for (const std::string& name : split(value())) {
        const std::optional<isa> which = isa_from_string(name);
        if (!which) bad_usage("unknown ISA '" + name + "'");
        if (*which != isa::reference) o.isas.push_back(*which);
      }
    } else if (flag == "--mode") {
      o.ops.clear();
      const std::map<std::string, operation> names = {
          {"sum", operation::forward_sum},       {"mean", operation::forward_mean},
          {"max", operation::forward_max},       {"weighted_sum", operation::forward_weighted_sum},
          {"lookup", operation::forward_lookup}, {"backward_dense", operation::backward_dense},
          {"backward_sparse", operation::backward_sparse}};
      for (const std::string& m : split(value())) {
        if (!names.count(m)) bad_usage("unknown mode '" + m + "'");
        o.ops.push_back(names.at(m));
      }
    } else if (flag == "--dtype") {
      o.types.clear();
      for (const std::string& name : split(value())) {
        const std::optional<dtype> type = dtype_from_name(name);
        if (!type) bad_usage("unknown dtype '" + name + "' (fp32, fp16, bf16, int8, int4)");
        o.types.push_back(*type);
      }
    } else if (flag == "--seconds") {
      o.seconds_per_result = std::atof(value());
      if (!(o.seconds_per_result > 0)) bad_usage("--seconds wants a positive number");
    } else if (flag == "--json") {
      o.json_path = value();
    } else {
      bad_usage("unknown option '" + flag + "'");
    }
  }
  return o;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}


// Every kernel's result on index set 0 against the reference's on the same table, bit for bit.
int verify(const workload& w, const bench_options& o) {
  int checked = 0;
  for (dtype type : o.types)
    for (operation op : o.ops) {
      if (!runs_on(op, type)) continue;
      call_buffers want;
      run_operation(op, w, 0, execution_for(isa::reference, 1), want, type);
      for (isa which : o.isas) {
        if (which == isa::reference) continue;
        call_buffers got;
        run_operation(op, w, 0, execution_for(which, 0), got, type);
      const bool same_dense = !want.dense_grad ||
          std::memcmp(want.dense_grad->row(0), got.dense_grad->row(0),
                      static_cast<std::size_t>(w.spec.rows * want.dense_grad->row_stride()) * sizeof(float)) == 0;
      const bool same = got.out == want.out && same_dense && got.sparse.rows == want.sparse.rows &&
                        got.sparse.values == want.sparse.values;
        if (!same) {
          std::fprintf(stderr, "embag bench: %s on %s %s DIFFERS from the reference\n", operation_name(op),
                       short_name(type).c_str(), std::string(to_string(which)).c_str());
          return -1;
        }
        ++checked;
      }
    }
  return checked;
}

// Times op on `which` over the table in `type`, each call followed by a roofline call on the same
// index set and table.
result measure(operation op, dtype type, isa which, int threads, const workload& w, prefetch_setting roofline_prefetch,
               double budget) {
  call_buffers buffers;
  const int sets = static_cast<int>(w.sets.size());
  run_operation(op, w, 0, execution_for(which, threads), buffers, type);  // warm-up, sizes the buffers
  std::vector<double> kernel, roofline_times;
  const auto start = std::chrono::steady_clock::now();
  const roofline_runs roofline(w, type, execution_for(available_isas().back(), threads, roofline_prefetch));
  for (int call = 0; call < 5 || (call < 2000 && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < budget); ++call) {
    const int set = call % sets;
    auto t0 = std::chrono::steady_clock::now();
    run_operation(op, w, set, execution_for(which, threads), buffers, type);
    auto t1 = std::chrono::steady_clock::now();
    roofline.run(set);
    auto t2 = std::chrono::steady_clock::now();
    kernel.push_back(std::chrono::duration<double>(t1 - t0).count());
    roofline_times.push_back(std::chrono::duration<double>(t2 - t1).count());
  }
  const auto median = [](std::vector<double> v) {
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };
  return {op, type, which, threads, median(kernel), median(roofline_times), roofline_prefetch};
}



void write_json(const std::string& path, const std::vector<result>& results, const workload& w,
                double sequential_bps) {
  std::ofstream out(path);
  if (!out) throw error(errc::invalid_option, "bench: cannot write --json file '" + path + "'");
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  out << "{\n  \"context\": {\n"
      << "    \"executable\": \"embag bench\",\n"
      << "    \"host_name\": \"" << host << "\",\n"
      << "    \"cpu_model\": \"" << cpu_model() << "\",\n"
      << "    \"num_cpus\": " << sysconf(_SC_NPROCESSORS_ONLN) << ",\n"
      << "    \"caches\": [\n"
      << "      {\"type\": \"Data\", \"level\": 1, \"size\": " << caches().l1d << "},\n"
      << "      {\"type\": \"Unified\", \"level\": 2, \"size\": " << caches().l2 << "},\n"
      << "      {\"type\": \"Unified\", \"level\": 3, \"size\": " << caches().llc << "}\n"
      << "    ],\n"
      << "    \"library_build_type\": \"release\",\n"
      << "    \"embag_version\": \"" << version() << "\",\n"
      << "    \"workload\": \"" << w.spec.name() << "\",\n"
      << "    \"table_bytes\": " << w.spec.table_bytes() << ",\n"
      << "    \"size_class\": \"" << size_class(w.spec.table_bytes()) << "\",\n"
      << "    \"sequential_read_bytes_per_second\": " << sequential_bps << "\n"
      << "  },\n  \"benchmarks\": [\n";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const result& r = results[i];
    const std::string name = benchmark_name(operation_name(r.op), r.which, r.type, w.spec, r.threads);
    const double bytes = row_bytes(w, 0, r.type);
    out << "    {\"name\": \"" << name << "\", \"run_name\": \"" << name
        << "\", \"run_type\": \"iteration\", \"iterations\": 1, \"repetitions\": 1,"
        << " \"real_time\": " << r.seconds * 1e3 << ", \"cpu_time\": " << r.seconds * 1e3
        << ", \"time_unit\": \"ms\", \"bytes_per_second\": " << bytes / r.seconds
        << ", \"f32_equivalent_bytes_per_second\": " << row_bytes(w, 0) / r.seconds
        << ", \"speedup_vs_f32\": " << (r.f32_seconds > 0 ? r.f32_seconds / r.seconds : 0.0)
        << ", \"items_per_second\": " << double(w.lookups(0)) / r.seconds
        << ", \"roofline_fraction\": " << r.roofline_seconds / r.seconds
        << ", \"roofline_bytes_per_second\": " << bytes / r.roofline_seconds
        << ", \"speedup_vs_reference\": " << (r.reference_seconds > 0 ? r.reference_seconds / r.seconds : 0.0)
        << ", \"roofline_prefetch\": \"" << prefetch_name(r.roofline_prefetch) << "\"}"
        << (i + 1 < results.size() ? ",\n" : "\n");
  }
  out << "  ]\n}\n";
}

}  // namespace

int bench_command(int argc, char** argv) {
  for (int i = 0; i < argc; ++i)
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::fputs(bench_help, stdout);
      return 0;
    }
  const bench_options o = parse(argc, argv);
  const workload_spec& spec = o.spec;
  std::printf("embag %s bench on %s, %d threads, L2 %lld KiB, LLC %lld MiB\n", std::string(version()).c_str(),
              cpu_model().c_str(), default_threads(), (long long)(caches().l2 >> 10), (long long)(caches().llc >> 20));
  std::printf("workload %s, B=%lld bags, %d rotating index sets; table %.0f MiB (%s-resident)\n", spec.name().c_str(),
              (long long)spec.bags, spec.index_sets, double(spec.table_bytes()) / (1 << 20),
              size_class(spec.table_bytes()).c_str());
  std::fflush(stdout);
  std::fprintf(stderr, "building the table and index sets...\n");
  workload w(spec);
  for (dtype type : o.types) w.add(type);

  const int verified = verify(w, o);
  if (verified < 0) return 1;
  std::printf("verified: %d kernel results match the reference bit for bit\n", verified);

  const isa best = available_isas().back();
  std::vector<result> results;
  std::map<int, double> sequential;
  std::map<std::pair<int, dtype>, prefetch_setting> roofline_prefetch;
  int total = 0, done = 0;
  for (dtype type : o.types)
    for (operation op : o.ops) total += runs_on(op, type) ? static_cast<int>(o.threads.size() * o.isas.size()) : 0;
  for (int threads : o.threads) {
    sequential[threads] = sequential_read_bytes_per_second(w, threads, best);
    for (dtype type : o.types) {
      prefetch_setting& prefetch = roofline_prefetch[{threads, type}] = best_roofline_prefetch(w, threads, best, type);
      for (operation op : o.ops)
        for (isa which : o.isas) {
          if (!runs_on(op, type)) continue;
          ++done;
          if (which == isa::reference && threads != 1) continue;  // the reference is single-threaded
          std::fprintf(stderr, "[%d/%d] %s %s %s threads:%d\n", done, total, operation_name(op),
                       short_name(type).c_str(), std::string(to_string(which)).c_str(), threads);
          results.push_back(measure(op, type, which, threads, w, prefetch,
                                    which == isa::reference ? o.seconds_per_result / 3 : o.seconds_per_result));
        }
    }
  }
  for (result& r : results)
    for (const result& other : results)
      if (other.op == r.op && other.type == r.type && other.which == isa::reference) r.reference_seconds = other.seconds;
      else if (other.op == r.op && other.which == r.which && other.threads == r.threads && other.type == dtype::f32)
        r.f32_seconds = other.seconds;

  // GB/s: the row bytes actually read (stored bytes); f32 GB/s: the fp32 bytes the same lookups
  // stand for; roofline: the fraction of read_rows' speed on the same rows of the same table.
  for (int threads : o.threads) {
    std::printf("\nthreads: %d   sequential read %.1f GB/s   roofline prefetch", threads, sequential[threads] / 1e9);
    for (dtype type : o.types)
      std::printf(" %s %s", short_name(type).c_str(), prefetch_name(roofline_prefetch[{threads, type}]).c_str());
    std::printf("\n%-22s %-5s %-10s %9s %8s %8s %11s %7s %7s %9s\n", "operation", "dtype", "isa", "ms/call", "GB/s",
                "f32 GB/s", "Mlookups/s", "vs f32", "vs ref", "roofline");
    for (const result& r : results) {
      if (r.threads != threads) continue;
      std::printf("%-22s %-5s %-10s %9.3f %8.2f %8.2f %11.1f %6.2fx %6.1fx %9.2f\n", operation_name(r.op),
                  short_name(r.type).c_str(), std::string(to_string(r.which)).c_str(), r.seconds * 1e3,
                  row_bytes(w, 0, r.type) / r.seconds / 1e9, row_bytes(w, 0) / r.seconds / 1e9,
                  double(w.lookups(0)) / r.seconds / 1e6, r.f32_seconds / r.seconds, r.reference_seconds / r.seconds,
                  r.roofline_seconds / r.seconds);
    }
  }
  if (!o.json_path.empty()) {
    write_json(o.json_path, results, w, sequential[o.threads.front()]);
    std::printf("\nwrote %s\n", o.json_path.c_str());
  }
  return 0;
}

}  // namespace embag::tool
