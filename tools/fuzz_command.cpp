// embag fuzz: the differential check of tools/fuzz/ on seeded random calls, for a number of cases
// or seconds. Case k uses seed + k, so `--seed S --cases 1` replays a reported case alone.
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "commands.hpp"
#include "fuzz/differential.hpp"

namespace embag::tool {
namespace {

int usage(FILE* to) {
  std::fprintf(to,
               "usage: embag fuzz [options]\n"
               "  --seconds S   run for S seconds (default 10 when --cases is not given)\n"
               "  --cases N     run N cases\n"
               "  --seed S      seed of the first case (default 1); case k uses S + k\n"
               "Each case is a whole call (possibly malformed), run forward and backward on the\n"
               "reference and every ISA of this CPU; exits 1 if any disagree.\n");
  return to == stdout ? 0 : 2;
}

}  // namespace

int fuzz_command(int argc, char** argv) {
  double seconds = 0;
  std::int64_t cases = 0;
  std::uint64_t seed = 1;
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return usage(stdout);
    if (i + 1 >= argc) return usage(stderr);
    char* end = nullptr;
    const char* value = argv[++i];
    if (arg == "--seconds") seconds = std::strtod(value, &end);
    else if (arg == "--cases") {
      errno = 0;
      cases = std::strtoll(value, &end, 10);
      if (errno == ERANGE) end = const_cast<char*>(value);
    } else if (arg == "--seed") {
      errno = 0;  // strtoull wraps "-1" and saturates past 2^64 - 1: both are refused
      seed = std::strtoull(value, &end, 10);
      if (errno == ERANGE || !std::isdigit(static_cast<unsigned char>(value[0]))) end = const_cast<char*>(value);
    } else return usage(stderr);
    if (end == value || *end != '\0' || !(seconds >= 0) || std::isinf(seconds) || cases < 0) {
      std::fprintf(stderr, "embag fuzz: bad value '%s' for %s\n", value, arg.c_str());
      return 2;
    }
  }
  if (seconds == 0 && cases == 0) seconds = 10;

  using clock = std::chrono::steady_clock;
  const clock::time_point start = clock::now();
  clock::time_point last_report = start;
  std::int64_t done = 0, rejected = 0, mismatches = 0;
  const auto elapsed = [&] { return std::chrono::duration<double>(clock::now() - start).count(); };
  const auto report = [&](const char* end) {
    std::fprintf(stderr, "\rfuzz: %lld cases (%.0f/s), %lld rejected as bad input, %lld mismatches%s", (long long)done,
                 done / std::max(elapsed(), 1e-9), (long long)rejected, (long long)mismatches, end);
  };
  while ((cases == 0 || done < cases) && (seconds == 0 || elapsed() < seconds)) {
    const std::uint64_t case_seed = seed + static_cast<std::uint64_t>(done);
    fuzz::seeded_choices source(case_seed);
    const fuzz::fuzz_call call = fuzz::draw_call(source);
    for (fuzz::operation op : {fuzz::operation::forward, fuzz::operation::backward}) {
      const fuzz::verdict v = fuzz::check_call(call, op);
      rejected += v.rejected && op == fuzz::operation::forward;
      if (!v.mismatch) continue;
      ++mismatches;
      std::fprintf(stderr, "\nMISMATCH: %s\n  call: %s\n  reproduce: embag fuzz --seed %llu --cases 1\n",
                   v.mismatch->c_str(), call.recipe.c_str(), (unsigned long long)case_seed);
    }
    ++done;
    if (clock::now() - last_report > std::chrono::milliseconds(500)) {
      last_report = clock::now();
      report("");
    }
  }
  report("\n");
  std::printf("embag fuzz: %lld cases in %.1f s, seeds %llu..%llu, %lld rejected as bad input, %lld mismatches\n",
              (long long)done, elapsed(), (unsigned long long)seed, (unsigned long long)(seed + done - 1),
              (long long)rejected, (long long)mismatches);
  return mismatches == 0 ? 0 : 1;
}

}  // namespace embag::tool
