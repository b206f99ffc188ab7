// The embag command.
//   embag info   version, the CPU's instruction sets, the one dispatch picked, the thread count
//   embag demo   a small forward-sum workload on every ISA, checked against the reference and timed
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "commands.hpp"
#include "embag/embag.hpp"

namespace {

std::string name(embag::isa i) { return std::string(embag::to_string(i)); }

int info() {
  std::string isas;
  for (embag::isa i : embag::available_isas()) isas += (isas.empty() ? "" : " ") + name(i);
  const std::string active = name(embag::active_isa());
  std::printf("embag %s\n", std::string(embag::version()).c_str());
  std::printf("isas available: %s\n", isas.c_str());
  std::printf("isa active:     %s\n", active.c_str());
  std::printf("threads:        %d\n", embag::default_threads());
  return 0;
}

// 2048 bags of 40 uniform random rows of a 256k x 64 table (64 MiB): forward sum on each ISA.
int demo() {
  constexpr std::int64_t rows = 256 * 1024, dim = 64, bags = 2048, pooling = 40;
  embag::table table(rows, dim);
  std::mt19937_64 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t d = 0; d < dim; ++d) table.row(r)[d] = normal(rng);
  std::vector<std::int64_t> indices(bags * pooling), offsets(bags);
  std::uniform_int_distribution<std::int64_t> pick(0, rows - 1);
  for (auto& i : indices) i = pick(rng);
  for (std::int64_t b = 0; b < bags; ++b) offsets[b] = b * pooling;
  const embag::bags batch = embag::bags::from_offsets(indices, offsets);

  std::printf("demo: forward sum, R=%lld D=%lld B=%lld L=%lld, %d threads\n", (long long)rows, (long long)dim,
              (long long)bags, (long long)pooling, embag::default_threads());
  std::printf("%-10s %10s %10s %10s  %s\n", "isa", "ms/call", "GB/s", "speed-up", "output");
  std::vector<float> expected(bags * dim), out(bags * dim);
  double reference_ms = 0;
  for (embag::isa which : embag::available_isas()) {
    embag::options opts;
    opts.execution.isa = which;
    const auto call = [&](std::vector<float>& y) {
      embag::forward(std::as_const(table).view(), batch, opts, {y.data(), bags, dim, dim});
    };
    call(which == embag::isa::reference ? expected : out);
    const bool same = which == embag::isa::reference || out == expected;
    std::vector<double> ms;
    for (int rep = 0; rep < 7; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      call(out);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    if (which == embag::isa::reference) reference_ms = median;
    const double gbs = double(bags * pooling * dim * 4) / (median * 1e6);
    std::printf("%-10s %10.3f %10.2f %9.1fx  %s\n", name(which).c_str(), median, gbs, reference_ms / median,
                same ? "matches the reference bit for bit" : "DIFFERS from the reference");
    if (!same) return 1;
  }
  return 0;
}

int usage(FILE* to) {
  std::fprintf(to, "usage: embag info | embag demo | embag bench [--help]\n");
  return to == stdout ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) return usage(stderr);
    const std::string command = argv[1];
    if (command == "info") return info();
    if (command == "demo") return demo();
    if (command == "bench") return embag::tool::bench_command(argc - 2, argv + 2);
    if (command == "--help" || command == "-h") return usage(stdout);
    std::fprintf(stderr, "embag: unknown command '%s'\n", argv[1]);
    return usage(stderr);
  } catch (const embag::error& e) {
    std::fprintf(stderr, "embag: %s\n", e.what());
    return 2;
  }
}
