#include "parallel.hpp"

#include <tbb/blocked_range.h>
#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

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

// After a threaded call its workers linger until the next threaded call starts or
// EMBAG_THREAD_LINGER_US microseconds have passed (default 200, 0: none), as OpenMP runtimes keep
// theirs spinning between parallel regions. A TBB worker that finds no work sleeps within
// microseconds, and waking it cost a call tens of microseconds on these VMs: 2,048 one-index bags
// of D = 128 took 0.073-0.081 ms on two threads right after a sparse backward, 0.035 back to back.
// A lingering worker yields the core between checks, so a thread of another pool (OpenMP's, in a
// process running torch too) that wants it gets it.
std::int64_t thread_linger_us() noexcept {
  static const std::int64_t us = [] {
    const char* env = std::getenv("EMBAG_THREAD_LINGER_US");
    return env != nullptr ? std::max<std::int64_t>(0, std::atoll(env)) : 200;
  }();
  return us;
}

namespace {

std::int64_t steady_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Threaded calls begun in this process: a lingering worker returns as soon as it changes.
std::atomic<std::uint64_t> threaded_calls{0};
// When workers were last set lingering (steady_ns): a threaded call's blocks were done, or an
// inline call woke them (request_warm_workers).
std::atomic<std::int64_t> last_linger_start_ns{0};
// Set by planning, taken by this thread's next run_blocks.
thread_local bool warm_requested = false;
// When the last call run inline that asked for warm workers ended (steady_ns).
std::atomic<std::int64_t> last_warmable_end_ns{0};

void linger_after(std::uint64_t call) {
  const std::int64_t until = steady_ns() + thread_linger_us() * 1000;
  while (threaded_calls.load(std::memory_order_relaxed) == call && steady_ns() < until) std::this_thread::yield();
}

// Queues one linger per worker in the current arena (a worker that sleeps is woken by it), where
// `call` is the number of threaded calls begun so far. From the caller's slot only (or a thread
// not yet in any arena, which the queueing puts in its own): a call nested in the caller's own TBB
// tasks leaves that caller's workers to its other tasks.
void start_lingering(std::uint64_t call, std::int64_t workers) {
  const int slot = tbb::this_task_arena::current_thread_index();
  if (thread_linger_us() <= 0 || (slot != 0 && slot != tbb::task_arena::not_initialized)) return;
  last_linger_start_ns.store(steady_ns(), std::memory_order_relaxed);
  for (std::int64_t worker = 0; worker < workers; ++worker) tbb::this_task_arena::enqueue([call] { linger_after(call); });
}

// Runs f in the arena a call's blocks run in: one the caller handed over; below the current
// arena's size, a cached smaller arena that enforces the cap; otherwise the caller's arena (nested
// inside its own TBB tasks if it has any).
template <class F>
void in_call_arena(const execution& how, int threads, const F& f) {
  if (tbb::task_arena* arena = handed_arena(how))
    arena->execute(f);
  else if (how.max_threads > 0 && threads < tbb::this_task_arena::max_concurrency() && threads <= max_cached_arena)
    arena_of(threads).execute(f);
  else
    f();
}

}  // namespace

void request_warm_workers() noexcept { warm_requested = true; }

bool workers_lingering() noexcept {
  const std::int64_t linger_ns = thread_linger_us() * 1000;
  return linger_ns > 0 && steady_ns() - last_linger_start_ns.load(std::memory_order_relaxed) < linger_ns;
}

int threads_for(const execution& how) noexcept {
  if (tbb::task_arena* arena = handed_arena(how)) return arena->max_concurrency();
  const int available = tbb::this_task_arena::max_concurrency();
  return how.max_threads <= 0 ? available : std::min(how.max_threads, available);
}

void run_blocks(std::int64_t count, const execution& how, void (*body)(const void* ctx, std::int64_t i),
                const void* ctx) {
  const int threads = threads_for(how);
  const bool warm = std::exchange(warm_requested, false);
  if (count <= 1 || threads <= 1) {
    for (std::int64_t i = 0; i < count; ++i) body(ctx, i);
    // Woken only when such calls come back to back (the last one ended within the linger), and
    // after the body: a woken worker may first be queued on the caller's own core, and isolated
    // calls that woke them before their body took 0.047 ms instead of 0.033.
    if (warm && threads > 1) {
      const std::int64_t now = steady_ns();
      if (now - last_warmable_end_ns.exchange(now, std::memory_order_relaxed) < thread_linger_us() * 1000)
        in_call_arena(how, threads, [&] { start_lingering(threaded_calls.load(std::memory_order_relaxed), threads - 1); });
    }
    return;
  }
  // TBB's spawn and wait order the caller's writes before the blocks and the blocks' writes
  // before the caller's next reads, but Debian's libtbb is not built for ThreadSanitizer, which
  // then sees neither. These two atomics state the same order in C++ it sees (one acquire and one
  // release per range of blocks: nothing next to the blocks' work), so the TSan lane does not depend
  // on its libtbb suppression, which a worker stack TSan failed to restore escapes.
  const std::uint64_t call = threaded_calls.fetch_add(1, std::memory_order_relaxed) + 1;
  std::atomic<bool> handed_over{false};
  std::atomic<std::int64_t> finished{0};
  handed_over.store(true, std::memory_order_release);
  const auto loop = [&] {
    tbb::parallel_for(tbb::blocked_range<std::int64_t>(0, count, 1), [&](const tbb::blocked_range<std::int64_t>& r) {
      (void)handed_over.load(std::memory_order_acquire);
      for (std::int64_t i = r.begin(); i != r.end(); ++i) body(ctx, i);
      finished.fetch_add(static_cast<std::int64_t>(r.size()), std::memory_order_release);
    });
    (void)finished.load(std::memory_order_acquire);
    // one linger per worker the blocks could have kept busy (more would wake sleeping workers
    // only to spin); one a worker reaches after the next call began returns at once
    start_lingering(call, std::min<std::int64_t>(count, threads) - 1);
  };
  in_call_arena(how, threads, loop);
}

}  // namespace detail
}  // namespace embag
