// Limits every layer shares.
#pragma once

#include <cstdint>

namespace embag::detail {

// The largest array validation admits: 2^56 bytes, the user address space of x86-64 with 5-level
// paging (AArch64's is smaller). No real array is larger, and one claiming to be would make the
// overlap checks depend on where the real buffers happen to lie.
inline constexpr std::int64_t max_array_bytes = std::int64_t{1} << 56;

}  // namespace embag::detail
