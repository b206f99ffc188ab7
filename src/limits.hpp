// Limits every layer shares.
#pragma once

#include <cstdint>

namespace embag::detail {

// The largest array validation admits: 2^56 bytes, the user address space of x86-64 with 5-level
// paging (AArch64's is smaller). No real array is larger, and one claiming to be would make the
// overlap checks depend on where the real buffers happen to lie.
inline constexpr std::int64_t max_array_bytes = std::int64_t{1} << 56;

// A 16-bit output's rows are computed in fp32 into a stage on the running thread's stack, then
// rounded into the output: at most this many columns. 16 KiB: cache-resident, and small enough for
// a server's small-stacked threads (fibers, coroutines) to call in inline mode.
inline constexpr std::int64_t narrowing_stage_floats = 4 * 1024;

}  // namespace embag::detail
