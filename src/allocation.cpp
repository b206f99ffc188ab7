#include "allocation.hpp"

#include <cstdio>

#include "embag/embag.hpp"

namespace embag::detail {

void out_of_memory(const std::string& what, std::size_t bytes) {
  char size[32];
  if (bytes >= (std::size_t{1} << 30)) std::snprintf(size, sizeof size, "%.1f GiB", double(bytes) / double(1u << 30));
  else if (bytes >= (std::size_t{1} << 20)) std::snprintf(size, sizeof size, "%.1f MiB", double(bytes) / double(1u << 20));
  else std::snprintf(size, sizeof size, "%zu bytes", bytes);
  throw error(errc::out_of_memory, "out of memory: " + what + " (" + size + ")");
}

}  // namespace embag::detail
