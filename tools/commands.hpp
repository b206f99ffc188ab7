// The subcommands of the embag tool. Each add_*_command adds its subcommand and flags to the tool
// (CLI11); the subcommand's callback, run once the whole command line is parsed, checks what CLI11
// does not (flags that go together, throwing CLI::ValidationError) and leaves the command's work
// in `run`, which returns the exit status.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace embag::tool {

using command_run = std::function<int()>;

void add_bench_command(CLI::App& tool, command_run& run);
void add_fuzz_command(CLI::App& tool, command_run& run);
void add_file_commands(CLI::App& tool, command_run& run);  // forward, backward, update, quantize, dequantize
void add_shard_commands(CLI::App& tool, command_run& run);  // shard-split, shard-join (built with MPI only)

}  // namespace embag::tool
