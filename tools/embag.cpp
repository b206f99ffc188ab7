// The embag command.
//   embag info   version, the CPU's instruction sets, the one dispatch picked, the thread count
//   embag bench  the cross-ISA benchmark report (tools/bench_command.cpp)
//   embag fuzz   the differential check of every ISA against the reference (tools/fuzz_command.cpp)
//   embag forward, embag backward   one call on .npy files (tools/file_commands.cpp)
//   embag quantize, embag dequantize   a .npy table to a compressed .embag table and back (same file)
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>

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
  const embag::cache_sizes c = embag::caches();
  std::printf("caches:         L1d %lld KiB, L2 %lld KiB, LLC %lld MiB\n", (long long)(c.l1d >> 10),
              (long long)(c.l2 >> 10), (long long)(c.llc >> 20));
  return 0;
}

int usage(FILE* to) {
  std::fprintf(to, "usage: embag info | embag bench [--help] | embag fuzz [--help]\n"
                  "       embag forward [--help] | embag backward [--help]\n"
                  "       embag quantize [--help] | embag dequantize [--help]\n");
  return to == stdout ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) return usage(stderr);
    const std::string command = argv[1];
    if (command == "info") return info();
    if (command == "bench") return embag::tool::bench_command(argc - 2, argv + 2);
    if (command == "fuzz") return embag::tool::fuzz_command(argc - 2, argv + 2);
    if (command == "forward") return embag::tool::forward_command(argc - 2, argv + 2);
    if (command == "backward") return embag::tool::backward_command(argc - 2, argv + 2);
    if (command == "quantize") return embag::tool::quantize_command(argc - 2, argv + 2);
    if (command == "dequantize") return embag::tool::dequantize_command(argc - 2, argv + 2);
    if (command == "--help" || command == "-h") return usage(stdout);
    std::fprintf(stderr, "embag: unknown command '%s'\n", argv[1]);
    return usage(stderr);
  } catch (const embag::error& e) {
    std::fprintf(stderr, "embag: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {  // an allocation the library or the tool did not name
    std::fprintf(stderr, "embag: out of memory\n");
    return 2;
  } catch (const std::exception& e) {  // TBB failing to start a thread, say
    std::fprintf(stderr, "embag: %s\n", e.what());
    return 2;
  }
}
