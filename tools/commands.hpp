// The subcommands of the embag tool, each given the arguments after its name.
#pragma once

#include "embag/embag.hpp"

namespace embag::tool {

int bench_command(int argc, char** argv);
int fuzz_command(int argc, char** argv);
int forward_command(int argc, char** argv);   // tools/file_commands.cpp
int backward_command(int argc, char** argv);
int quantize_command(int argc, char** argv);
int dequantize_command(int argc, char** argv);

}  // namespace embag::tool
