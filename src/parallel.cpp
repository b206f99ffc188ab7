#include "parallel.hpp"

#include <tbb/blocked_range.h>
#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <array>
#include <memory>
#include <mutex>

#include "embag/embag.hpp"

namespace embag {

int default_threads() noexcept { return tbb::this_task_arena::max_concurrency(); }

namespace detail {
namespace {

// Arenas capped to n threads, made once each: a fresh arena per call costs 12-16 us.
constexpr int max_cached_arena = 256;

tbb::task_arena& arena_of(int threads) {
  static std::array<std::once_flag, max_cached_arena + 1> made;
  static std::array<std::unique_ptr<tbb::task_arena>, max_cached_arena + 1> arenas;
  std::call_once(made[threads], [&] {
    arenas[threads] = std::make_unique<tbb::task_arena>(threads);
    arenas[threads]->initialize();
  });
  return *arenas[threads];
}

tbb::task_arena* handed_arena(const execution& how) noexcept { return static_cast<tbb::task_arena*>(how.arena); }

}  // namespace

int threads_for(const execution& how) noexcept {
  if (tbb::task_arena* arena = handed_arena(how)) return arena->max_concurrency();
  const int available = tbb::this_task_arena::max_concurrency();
  return how.max_threads <= 0 ? available : std::min(how.max_threads, available);
}

void run_blocks(std::int64_t count, const execution& how, void (*body)(const void* ctx, std::int64_t i),
                const void* ctx) {
  const int threads = threads_for(how);
  if (count <= 1 || threads <= 1) {
    for (std::int64_t i = 0; i < count; ++i) body(ctx, i);
    return;
  }
  const auto loop = [&] {
    tbb::parallel_for(tbb::blocked_range<std::int64_t>(0, count, 1), [&](const tbb::blocked_range<std::int64_t>& r) {
      for (std::int64_t i = r.begin(); i != r.end(); ++i) body(ctx, i);
    });
  };
  // An arena the caller handed over runs it; below the current arena's size, a cached smaller
  // arena enforces the cap; otherwise run in the caller's arena (nested inside its own TBB tasks
  // if it has any).
  if (tbb::task_arena* arena = handed_arena(how))
    arena->execute(loop);
  else if (how.max_threads > 0 && threads < tbb::this_task_arena::max_concurrency() && threads <= max_cached_arena)
    arena_of(threads).execute(loop);
  else
    loop();
}

}  // namespace detail
}  // namespace embag
