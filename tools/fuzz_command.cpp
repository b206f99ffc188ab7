// embag fuzz: the differential check of tools/fuzz/ on seeded random calls, for a number of cases
// or seconds. Case k uses seed + k, so `--seed S --cases 1` replays a reported case alone.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>

#include "commands.hpp"
#include "flags.hpp"
#include "fuzz/differential.hpp"

namespace embag::tool {
namespace {

struct fuzz_options {
  double seconds = 0;
  std::int64_t cases = 0;
  std::uint64_t seed = 1;
};

int run_fuzz(const fuzz_options& o) {
  using clock = std::chrono::steady_clock;
  const clock::time_point start = clock::now();
  clock::time_point last_report = start;
  std::int64_t done = 0, rejected = 0, mismatches = 0;
  const auto elapsed = [&] { return std::chrono::duration<double>(clock::now() - start).count(); };
  const auto report = [&](const char* end) {
    std::fprintf(stderr, "\rfuzz: %lld cases (%.0f/s), %lld rejected as bad input, %lld mismatches%s", (long long)done,
                 done / std::max(elapsed(), 1e-9), (long long)rejected, (long long)mismatches, end);
  };
  while ((o.cases == 0 || done < o.cases) && (o.seconds == 0 || elapsed() < o.seconds)) {
    const std::uint64_t case_seed = o.seed + static_cast<std::uint64_t>(done);
    fuzz::seeded_choices source(case_seed);
    const fuzz::fuzz_call call = fuzz::draw_fuzz_call(source);
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
              (long long)done, elapsed(), (unsigned long long)o.seed, (unsigned long long)(o.seed + done - 1),
              (long long)rejected, (long long)mismatches);
  return mismatches == 0 ? 0 : 1;
}

}  // namespace

void add_fuzz_command(CLI::App& tool, command_run& run) {
  const auto o = std::make_shared<fuzz_options>();
  CLI::App& fuzz = *tool.add_subcommand("fuzz", "The differential check of every ISA of this CPU against the reference.");
  fuzz.footer("Each case is a whole call (possibly malformed), run forward (single and batched) and backward on the\n"
              "reference and every ISA of this CPU; exits 1 if any disagree.");
  fuzz.add_option("--seconds", o->seconds, "run for S seconds (default 10 when --cases is not given)")
      ->type_name("S")
      ->transform(number<double>("a number of seconds, 0 or more", [](double s) { return s >= 0 && std::isfinite(s); }));
  fuzz.add_option("--cases", o->cases, "run N cases")
      ->type_name("N")
      ->transform(number<std::int64_t>("a count, 0 or more", [](std::int64_t n) { return n >= 0; }));
  fuzz.add_option("--seed", o->seed, "the seed of the first case (default 1); case k uses S + k")
      ->type_name("S")
      ->transform(number<std::uint64_t>("an integer from 0 to 2^64 - 1"));
  fuzz.callback([o, &run] {
    if (o->seconds == 0 && o->cases == 0) o->seconds = 10;
    run = [o] { return run_fuzz(*o); };
  });
}

}  // namespace embag::tool
