// embag-loadgen: writes a sample model, and drives embag-serve with an open-loop load.
//
// Open loop: request i is due at start + i / rate whatever happened to the ones before, and its
// latency is measured from that due time, so time spent queueing (in the server, or waiting for a
// free connection here) is counted, not hidden as a closed loop (wrk-style) hides it.
//
//   embag-loadgen write-model DIR [--tables 8] [--rows 200000] [--dim 64]
//   embag-loadgen run [--port 8080] [--fractions 0.25,0.5,...] [--rates R,...] [--seconds 5] [--json FILE]
//       [--deploy-at S --model-dir DIR --deploy-table t0]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <httplib.h>
#include <latch>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "embag/npy.hpp"
#include "embag/quantize.hpp"
#include "protocol.hpp"

namespace fs = std::filesystem;
using namespace embag;
using namespace embag::serve;
using clock_type = std::chrono::steady_clock;

namespace {

// The sample model: the first half of the tables fp32 .npy, the second half int8 rowwise .embag,
// values uniform in [-1, 1).
void write_model(const fs::path& dir, int tables, std::int64_t rows, std::int64_t dim) {
  fs::create_directories(dir);
  nlohmann::json manifest;
  manifest["tables"] = nlohmann::json::array();
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<float> value(-1, 1);
  std::vector<float> values(static_cast<std::size_t>(rows * dim));
  for (int t = 0; t < tables; ++t) {
    for (auto& v : values) v = value(rng);
    const std::string name = "t" + std::to_string(t);
    const bool packed = t >= tables / 2;
    const std::string file = name + (packed ? ".embag" : ".npy");
    if (packed) {
      write_embag((dir / file).string(), quantize(table_view<const float>{values.data(), rows, dim, 0}, dtype::int8_rowwise).view());
    } else {
      const std::int64_t shape[] = {rows, dim};
      write_npy((dir / file).string(), npy_dtype::f32, shape, values.data());
    }
    manifest["tables"].push_back({{"name", name}, {"file", file}, {"mode", "sum"}});
  }
  std::ofstream(dir / "manifest.json") << manifest.dump(2) << "\n";
  std::printf("wrote %s: %d tables of %lld x %lld (fp32 .npy and int8 .embag) and manifest.json\n", dir.c_str(), tables,
              static_cast<long long>(rows), static_cast<long long>(dim));
}

struct load_options {
  std::string host = "127.0.0.1";
  int port = 8080;
  int bags = 64;           // per request, spread over every table of the model
  int pooling = 20;        // mean ids per bag (lengths uniform in [1, 2 pooling - 1])
  int connections = 8;  // at most the server's workers: httplib serves one connection per worker
  double seconds = 5;
  std::vector<double> rates, fractions;
  std::string format = "binary", output = "f32";
  std::string json_path;
  double deploy_at = -1;  // seconds into each run; < 0: no deploy
  std::string model_dir, deploy_table = "t0";
};

struct run_result {
  double offered = 0, achieved = 0;
  std::size_t requests = 0, errors = 0;
  double p50 = 0, p99 = 0, p999 = 0, max = 0;  // milliseconds
  double deploy_ms = -1;
};

std::vector<std::string> make_bodies(const load_options& o, const nlohmann::json& models) {
  std::mt19937_64 rng(7);
  const auto& tables = models["tables"];
  std::vector<std::string> bodies;
  for (int k = 0; k < 512; ++k) {
    lookup_request request;
    request.output = o.output == "f16" ? output_type::f16 : output_type::f32;
    for (std::size_t t = 0; t < tables.size(); ++t) {
      table_request section;
      section.table = tables[t]["name"];
      const auto rows = tables[t]["rows"].get<std::int64_t>();
      const int bags = o.bags / int(tables.size()) + (int(t) < o.bags % int(tables.size()));
      for (int b = 0; b < bags; ++b) {
        const int length = std::uniform_int_distribution<int>(1, 2 * o.pooling - 1)(rng);
        section.lengths.push_back(length);
        for (int i = 0; i < length; ++i) section.indices.push_back(std::uniform_int_distribution<std::int64_t>(0, rows - 1)(rng));
      }
      request.tables.push_back(std::move(section));
    }
    bodies.push_back(o.format == "json" ? encode_json_request(request) : encode_binary_request(request));
  }
  return bodies;
}

double percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const auto at = static_cast<std::size_t>(std::min<double>(double(sorted.size() - 1), p * double(sorted.size())));
  return sorted[at];
}

// A deploy in the middle of a run, as a deploy tool makes one: the table's new file written beside
// it before the run (stage_deploy), then renamed into place and the server asked to reload (deploy).
// Writing 51 MB during the run would measure this process's own stall on the core it shares.
fs::path table_file(const load_options& o) {
  const auto manifest = nlohmann::json::parse(std::ifstream(fs::path(o.model_dir) / "manifest.json"));
  for (const auto& t : manifest["tables"])
    if (t["name"] == o.deploy_table) return fs::path(o.model_dir) / t["file"].get<std::string>();
  throw std::runtime_error("no table " + o.deploy_table + " in " + o.model_dir + "/manifest.json");
}

fs::path stage_deploy(const load_options& o) {
  const auto file = table_file(o);
  const auto staged = fs::path(file.string() + ".next");
  if (file.extension() == ".npy") {
    const auto table = npy_array::open(file.string(), npy_array::load::copy);
    write_npy(staged.string(), npy_dtype::f32, table.shape(), table.data());
  } else {
    write_embag(staged.string(), compressed_table::open(file.string(), compressed_table::load::copy).view());
  }
  return staged;
}

double deploy(const load_options& o, const fs::path& staged) {
  const auto start = clock_type::now();
  fs::rename(staged, table_file(o));
  httplib::Client admin(o.host, o.port);
  auto res = admin.Post("/v1/reload", "", "text/plain");
  if (!res || res->status != 200) std::fprintf(stderr, "embag-loadgen: the deploy's reload failed\n");
  return std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
}

// rate <= 0: closed loop, every connection sending back to back (the saturation throughput).
run_result run_at(const load_options& o, const std::vector<std::string>& bodies, double rate, bool with_deploy) {
  const std::size_t total = rate > 0 ? static_cast<std::size_t>(rate * o.seconds) : SIZE_MAX;
  const fs::path staged = with_deploy ? stage_deploy(o) : fs::path();
  // Every connection is opened (and used once) before the clock starts: a burst of connects can
  // overflow httplib's listen backlog of 5, and a dropped SYN is retried after a whole second.
  // The clock starts once they all are: set before, a connect retried after a second made the
  // first second's requests late (a one-second p99 that was this program's, not the server's).
  std::latch connected(o.connections), started(1);
  clock_type::time_point start, end;
  const char* content_type = o.format == "json" ? "application/json" : "application/x-embag";
  std::atomic<std::size_t> next{0};
  std::atomic<std::size_t> errors{0};
  std::vector<std::vector<double>> latencies(static_cast<std::size_t>(o.connections));
  std::vector<clock_type::time_point> last_done(static_cast<std::size_t>(o.connections), start);
  std::vector<std::thread> threads;
  for (int c = 0; c < o.connections; ++c)
    threads.emplace_back([&, c] {
      httplib::Client client(o.host, o.port);
      client.set_keep_alive(true);
      client.set_tcp_nodelay(true);  // headers and body are two writes: Nagle would hold the body ~40 ms
      client.set_read_timeout(std::chrono::seconds(30));
      if (!client.Get("/healthz")) ++errors;
      connected.count_down();
      started.wait();
      auto& mine = latencies[static_cast<std::size_t>(c)];
      for (;;) {
        const std::size_t i = next++;
        if (i >= total) break;
        clock_type::time_point due;
        if (rate > 0) {
          due = start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(double(i) / rate));
          std::this_thread::sleep_until(due);
        } else {
          due = std::max(clock_type::now(), start);
          std::this_thread::sleep_until(due);
          if (due >= end) break;
        }
        auto res = client.Post("/v1/lookup", bodies[i % bodies.size()], content_type);
        const auto done = clock_type::now();
        if (!res || res->status != 200) ++errors;
        else mine.push_back(std::chrono::duration<double, std::milli>(done - due).count());
        last_done[static_cast<std::size_t>(c)] = done;
      }
    });
  connected.wait();
  start = clock_type::now() + std::chrono::milliseconds(10);
  end = start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(o.seconds));
  started.count_down();
  run_result result;
  if (with_deploy) {
    std::this_thread::sleep_until(start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(o.deploy_at)));
    result.deploy_ms = deploy(o, staged);
  }
  for (auto& t : threads) t.join();
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  const auto finished = *std::max_element(last_done.begin(), last_done.end());
  result.offered = rate;
  result.requests = all.size() + errors;
  result.errors = errors;
  result.achieved = double(all.size()) / std::chrono::duration<double>(finished - start).count();
  result.p50 = percentile(all, 0.5);
  result.p99 = percentile(all, 0.99);
  result.p999 = percentile(all, 0.999);
  result.max = all.empty() ? 0 : all.back();
  return result;
}

nlohmann::json to_json(const run_result& r) {
  nlohmann::json j = {{"offered_rps", r.offered}, {"achieved_rps", r.achieved}, {"requests", r.requests}, {"errors", r.errors},
                      {"p50_ms", r.p50}, {"p99_ms", r.p99}, {"p999_ms", r.p999}, {"max_ms", r.max}};
  if (r.deploy_ms >= 0) j["deploy_ms"] = r.deploy_ms;
  return j;
}

void print(const run_result& r, const char* label) {
  std::printf("%-10s %10.0f %10.0f %8zu %6zu %8.3f %8.3f %8.3f %8.3f%s\n", label, r.offered, r.achieved, r.requests, r.errors,
              r.p50, r.p99, r.p999, r.max, r.deploy_ms >= 0 ? "  (deploy during the run)" : "");
  std::fflush(stdout);
}

int run_load(const load_options& o) {
  // A server just started may still be mapping its tables: wait for it, a while.
  httplib::Client probe(o.host, o.port);
  auto models = probe.Get("/v1/models");
  for (int retry = 0; retry < 300 && !models; ++retry) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    models = probe.Get("/v1/models");
  }
  if (!models || models->status != 200) {
    std::fprintf(stderr, "embag-loadgen: no server at %s:%d (GET /v1/models failed for 30 s)\n", o.host.c_str(), o.port);
    return 1;
  }
  const auto model = nlohmann::json::parse(models->body);
  const auto bodies = make_bodies(o, model);
  std::printf("%zu tables, %d bags of ~%d ids per request, %s bodies of ~%zu bytes, %d connections, %.1f s per rate\n",
              model["tables"].size(), o.bags, o.pooling, o.format.c_str(), bodies[0].size(), o.connections, o.seconds);
  std::printf("%-10s %10s %10s %8s %6s %8s %8s %8s %8s\n", "run", "offered/s", "achieved/s", "requests", "errors", "p50 ms",
              "p99 ms", "p99.9 ms", "max ms");
  nlohmann::json report = {{"bags", o.bags}, {"pooling", o.pooling}, {"tables", model["tables"].size()}, {"format", o.format},
                           {"output", o.output}, {"connections", o.connections}, {"seconds", o.seconds}};
  std::vector<double> rates = o.rates;
  if (!o.fractions.empty()) {
    const auto saturation = run_at(o, bodies, 0, false);
    print(saturation, "saturation");
    report["saturation"] = to_json(saturation);
    for (double f : o.fractions) rates.push_back(f * saturation.achieved);
  }
  report["runs"] = nlohmann::json::array();
  for (double rate : rates) {
    const auto r = run_at(o, bodies, rate, false);
    print(r, "open loop");
    report["runs"].push_back(to_json(r));
    if (o.deploy_at >= 0) {
      const auto d = run_at(o, bodies, rate, true);
      print(d, "open loop");
      report["runs"].push_back(to_json(d));
    }
  }
  if (!o.json_path.empty()) {
    std::ofstream(o.json_path) << report.dump(2) << "\n";
    std::printf("wrote %s\n", o.json_path.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"embag-loadgen: a sample model for embag-serve, and an open-loop load on it"};
  app.require_subcommand(1);
  auto* write = app.add_subcommand("write-model", "write a sample model directory");
  std::string dir;
  int tables = 8;
  std::int64_t rows = 200000, dim = 64;
  write->add_option("dir", dir, "the model directory")->required();
  write->add_option("--tables", tables, "tables (half fp32 .npy, half int8 .embag)")->capture_default_str()->check(CLI::Range(1, 1000));
  write->add_option("--rows", rows, "rows per table")->capture_default_str()->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40));
  write->add_option("--dim", dim, "columns per table")->capture_default_str()->check(CLI::Range(1, 1 << 20));

  load_options o;
  auto* run = app.add_subcommand("run", "open-loop load at several rates, latency from each request's due time");
  run->add_option("--host", o.host)->capture_default_str();
  run->add_option("--port", o.port)->capture_default_str();
  run->add_option("--bags", o.bags, "bags per request, over every table")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  run->add_option("--pooling", o.pooling, "mean ids per bag")->capture_default_str()->check(CLI::Range(1, 1 << 16));
  run->add_option("--connections", o.connections, "connections (and sending threads)")->capture_default_str()->check(CLI::Range(1, 4096));
  run->add_option("--seconds", o.seconds, "seconds per rate")->capture_default_str()->check(CLI::PositiveNumber);
  run->add_option("--rates", o.rates, "offered rates, requests per second")->delimiter(',');
  run->add_option("--fractions", o.fractions, "measure saturation (closed loop) first, then run at these fractions of it")
      ->delimiter(',');
  run->add_option("--format", o.format, "binary or json")->capture_default_str()->check(CLI::IsMember({"binary", "json"}));
  run->add_option("--output", o.output, "f32 or f16")->capture_default_str()->check(CLI::IsMember({"f32", "f16"}));
  run->add_option("--json", o.json_path, "write the results here");
  run->add_option("--deploy-at", o.deploy_at, "also run each rate with a deploy of --deploy-table this many seconds in");
  run->add_option("--model-dir", o.model_dir, "the served model directory (for --deploy-at)");
  run->add_option("--deploy-table", o.deploy_table)->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    if (*write) {
      write_model(dir, tables, rows, dim);
      return 0;
    }
    if (o.rates.empty() && o.fractions.empty()) o.fractions = {0.25, 0.5, 0.75, 0.9, 1.0, 1.1};
    if (o.deploy_at >= 0 && o.model_dir.empty()) {
      std::fprintf(stderr, "embag-loadgen: --deploy-at needs --model-dir\n");
      return 1;
    }
    return run_load(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "embag-loadgen: %s\n", e.what());
    return 1;
  }
}
