// Runs inputs through a libFuzzer target's LLVMFuzzerTestOneInput without libFuzzer: how the saved
// corpora become `meson test` cases under any compiler (GCC has no -fsanitize=fuzzer), as simdjson
// and dav1d replay theirs. Arguments: files, or directories whose regular files are all taken, in
// name order. An input the target rejects aborts, as under libFuzzer; the abort names the input.
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <unistd.h>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

// The input being run, for the abort handler (which may only write(2) it).
char current_input[4096];

extern "C" void name_the_input(int) {
  const char prefix[] = "replay: the target aborted on ";
  [[maybe_unused]] ssize_t written = write(STDERR_FILENO, prefix, sizeof prefix - 1);
  written = write(STDERR_FILENO, current_input, std::strlen(current_input));
  written = write(STDERR_FILENO, "\n", 1);
  std::signal(SIGABRT, SIG_DFL);
  std::raise(SIGABRT);
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    if (!fs::is_directory(argv[i], ec)) {  // a file (one that cannot be opened is refused below)
      inputs.emplace_back(argv[i]);
      continue;
    }
    for (const fs::directory_entry& entry : fs::directory_iterator(argv[i], ec))
      if (entry.is_regular_file()) inputs.push_back(entry.path());
    if (ec) {
      std::fprintf(stderr, "replay: cannot list %s: %s\n", argv[i], ec.message().c_str());
      return 2;
    }
  }
  if (inputs.empty()) {
    std::fprintf(stderr, "replay: no inputs in the arguments (files or directories of them)\n");
    return 2;
  }
  std::sort(inputs.begin(), inputs.end());
  std::signal(SIGABRT, name_the_input);
  for (const fs::path& input : inputs) {
    std::ifstream file(input, std::ios::binary);
    if (!file.is_open()) {
      std::fprintf(stderr, "replay: cannot open %s\n", input.c_str());
      return 2;
    }
    const std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    std::snprintf(current_input, sizeof current_input, "%s", input.c_str());
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  }
  std::printf("replayed %zu inputs\n", inputs.size());
  return 0;
}
