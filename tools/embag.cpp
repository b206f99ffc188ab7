// The embag command.
//   embag info   version, the CPU's instruction sets, the one dispatch picked, the thread count
//   embag bench  the cross-ISA benchmark report (tools/bench_command.cpp)
//   embag fuzz   the differential check of every ISA against the reference (tools/fuzz_command.cpp)
//   embag forward, embag backward   one call on .npy files (tools/file_commands.cpp)
//   embag quantize, embag dequantize   a .npy table to a compressed .embag table and back (same file)
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <new>
#include <optional>
#include <string>
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
  const embag::cache_sizes c = embag::caches();
  std::printf("caches:         L1d %lld KiB, L2 %lld KiB, LLC %lld MiB\n", (long long)(c.l1d >> 10),
              (long long)(c.l2 >> 10), (long long)(c.llc >> 20));
  return 0;
}

// A usage error: one line naming the command given, if any, and exit status 2.
int usage_error(const std::vector<CLI::App*>& given, const std::string& message) {
  const std::string command = given.empty() ? "embag" : "embag " + given.front()->get_name();
  std::fprintf(stderr, "embag: %s%s (see %s --help)\n", given.empty() ? "" : (given.front()->get_name() + ": ").c_str(),
               message.c_str(), command.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App tool("SIMD embedding bags on the CPU: the library's checks, benchmarks and calls on files.", "embag");
  // Arguments CLI11 does not know are left over rather than refused (every subcommand inherits
  // this), so that the error below names the first of them.
  tool.allow_extras();
  // A flag given again overrides its value, as before CLI11 (a file flag given twice is an error: add_file)
  tool.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  tool.require_subcommand(0, 1);
  embag::tool::command_run run;
  tool.add_subcommand("info", "The version, this CPU's instruction sets, the one dispatch picked, threads, caches.")
      ->callback([&run] { run = info; });
  embag::tool::add_bench_command(tool, run);
  embag::tool::add_fuzz_command(tool, run);
  embag::tool::add_file_commands(tool, run);
#ifdef EMBAG_WITH_MPI
  embag::tool::add_shard_commands(tool, run);
#endif
  try {
    std::optional<std::string> failure;
    try {
      tool.parse(argc, argv);
    } catch (const CLI::ParseError& e) {  // CLI::CallForHelp too, answered below
      failure = e.what();
    }
    const std::vector<CLI::App*> given = tool.get_subcommands();
    // --help comes first, whatever else the line holds (CLI11 checks the values before it)
    if (tool.get_help_ptr()->count() > 0 || (!given.empty() && given.front()->get_help_ptr()->count() > 0))
      return std::fputs(tool.help().c_str(), stdout), 0;  // the help of the command given
    // Then an argument CLI11 does not know: the other errors may follow from it (a flag misspelt is
    // a required flag missing).
    const std::vector<std::string> unknown = tool.remaining(true);
    if (!unknown.empty())
      return usage_error(given, (given.empty() ? "unknown command '" : "unknown option '") + unknown.front() + "'");
    if (failure) return usage_error(given, *failure);
    if (!run) return std::fputs(tool.help().c_str(), stderr), 2;  // no command
    return run();
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
