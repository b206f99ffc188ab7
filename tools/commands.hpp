// The subcommands of the embag tool, each given the arguments after its name.
#pragma once

#include <optional>
#include <string_view>

#include "embag/embag.hpp"

namespace embag::tool {

// The element type named on the command line: fp32, fp16, bf16, int8 or int4 (tools/file_commands.cpp).
std::optional<dtype> dtype_from_name(std::string_view name);

int bench_command(int argc, char** argv);
int fuzz_command(int argc, char** argv);
int forward_command(int argc, char** argv);   // tools/file_commands.cpp
int backward_command(int argc, char** argv);
int quantize_command(int argc, char** argv);
int dequantize_command(int argc, char** argv);

}  // namespace embag::tool
