// Runs the blocks of a plan: inline, in the caller's TBB arena, in an arena the call was handed, or
// in a cached arena capped to the caller's thread limit. Knows nothing of SIMD or of what the blocks
// do.
#pragma once

#include <cstdint>

#include "embag/embag.hpp"

namespace embag::detail {

// The threads a call run this way may use (1 means inline).
int threads_for(const execution& how) noexcept;

// How long a threaded call's workers linger after it, in microseconds (EMBAG_THREAD_LINGER_US,
// read once; 0: not at all).
std::int64_t thread_linger_us() noexcept;

// Whether TBB workers are likely awake: they were set lingering (after a threaded call, or by an
// inline one that asked for them) within EMBAG_THREAD_LINGER_US, so handing them blocks now costs
// microseconds, not a wake-up.
bool workers_lingering() noexcept;

// Asks this thread's next run_blocks, when it runs inline on more than one thread's allowance, to
// wake the workers once its blocks are done and leave them lingering as after a threaded call, if
// the previous call that asked ended within the linger (calls back to back). Planning asks it of a
// call it runs inline only because the workers sleep.
void request_warm_workers() noexcept;

// Calls body(ctx, i) for i in [0, count), possibly concurrently. Exceptions must not escape body.
void run_blocks(std::int64_t count, const execution& how, void (*body)(const void* ctx, std::int64_t i), const void* ctx);

template <class Body>
void run_blocks(std::int64_t count, const execution& how, const Body& body) {
  run_blocks(count, how, [](const void* ctx, std::int64_t i) { (*static_cast<const Body*>(ctx))(i); }, &body);
}

}  // namespace embag::detail
