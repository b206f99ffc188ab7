// embag's forward on one workload with each prefetch setting in turn, in one process, the settings
// interleaved round by round (each round: 8 calls of each, one per index set), and the median time
// of a call per setting, against the automatic choice (which learns its own among its candidates in
// the first rounds: plan.cpp's prefetch trials). What the prefetch candidates and their distances are
// tuned from: absolute times drift between processes on the shared guests, ratios in one process
// much less. The forced settings are the roofline's sweep (roofline_prefetch_sweep).
//
//   build/bench/prefetch_sweep [--rows R] [--dim D] [--pooling L] [--zipf] [--threads T]
//                              [--mode sum|mean|max] [--rounds N]
//
// Defaults: R = 1000000, D = 128, L = 40, uniform ids, 1 thread, sum, 20 rounds.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "workload.hpp"

using namespace embag;
using namespace embag::bench;

namespace {

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "prefetch_sweep: %s\nusage: prefetch_sweep [--rows R] [--dim D] [--pooling L] [--zipf] [--threads T] "
               "[--mode sum|mean|max] [--rounds N]\n",
               why);
  std::exit(2);
}

std::int64_t positive(const char* option, const char* text) {
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (*text == '\0' || *end != '\0' || value <= 0) usage((std::string(option) + " takes a positive integer, not '" + text + "'").c_str());
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  workload_spec spec;
  int threads = 1, rounds = 20;
  operation op = operation::forward_sum;
  for (int i = 1; i < argc; ++i) {
    const std::string option = argv[i];
    if (option == "--zipf") {
      spec.dist = distribution::zipf;
      continue;
    }
    if (i + 1 == argc) usage((option + " needs a value, or is not an option").c_str());
    const char* value = argv[++i];
    if (option == "--rows") spec.rows = positive("--rows", value);
    else if (option == "--dim") spec.dim = positive("--dim", value);
    else if (option == "--pooling") spec.pooling = positive("--pooling", value);
    else if (option == "--threads") threads = static_cast<int>(positive("--threads", value));
    else if (option == "--rounds") rounds = static_cast<int>(positive("--rounds", value));
    else if (option == "--mode") {
      const std::string mode = value;
      if (mode == "sum") op = operation::forward_sum;
      else if (mode == "mean") op = operation::forward_mean;
      else if (mode == "max") op = operation::forward_max;
      else usage(("--mode is sum, mean or max, not '" + mode + "'").c_str());
    } else {
      usage(("unknown option " + option).c_str());
    }
  }

  const workload w(spec);
  std::vector<prefetch_setting> settings{{prefetch_level::automatic, 0}};  // then the roofline's sweep
  settings.insert(settings.end(), roofline_prefetch_sweep().begin(), roofline_prefetch_sweep().end());

  const isa best = available_isas().back();
  call_buffers buffers;
  std::vector<std::vector<double>> seconds(settings.size());
  const int sets = static_cast<int>(w.sets.size());
  for (int round = -1; round < rounds; ++round)  // round -1: warm-up, and the automatic choice's trials
    for (std::size_t s = 0; s < settings.size(); ++s) {
      const execution how = execution_for(best, threads, settings[s]);
      const int calls = round < 0 && s == 0 ? 16 * sets : sets;
      const auto start = std::chrono::steady_clock::now();
      for (int set = 0; set < calls; ++set) run_operation(op, w, set % sets, how, buffers);
      const double per_call = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / calls;
      if (round >= 0) seconds[s].push_back(per_call);
    }

  std::printf("%s %s, %s, %d thread(s), median ms per call over %d rounds:\n", operation_name(op), spec.name().c_str(),
              std::string(to_string(best)).c_str(), threads, rounds);
  const double automatic = median(seconds[0]);
  for (std::size_t s = 0; s < settings.size(); ++s) {
    const std::string name = s == 0 ? "automatic" : prefetch_name(settings[s]);
    const double ms = median(seconds[s]);
    std::printf("  %-16s %8.3f  %5.2fx\n", name.c_str(), ms * 1e3, ms / automatic);
  }
}
