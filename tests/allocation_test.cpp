// The hot path allocates nothing: after one warm-up call, forward (every mode, inline and on TBB
// threads) and backward with a reused workspace and sparse_gradient make no heap allocation.
// Counted by replacing malloc and friends for this test binary (glibc allows it), which catches
// C++ `new`, std containers and TBB's internals alike.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>

#include "support/run.hpp"

// Sanitizers bring their own malloc: there the counter is not installed and the tests skip.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define EMBAG_COUNT_MALLOC 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define EMBAG_COUNT_MALLOC 0
#endif
#endif
#ifndef EMBAG_COUNT_MALLOC
#define EMBAG_COUNT_MALLOC 1
#endif

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
[[maybe_unused]] void count() {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

#if EMBAG_COUNT_MALLOC
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
}

extern "C" {
void* malloc(std::size_t n) {
  count();
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t size) {
  count();
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) {
  count();
  return __libc_realloc(p, n);
}
void* memalign(std::size_t alignment, std::size_t n) {
  count();
  return __libc_memalign(alignment, n);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) {
  count();
  return __libc_memalign(alignment, n);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t n) {
  count();
  *out = __libc_memalign(alignment, n);
  return *out ? 0 : 12;  // ENOMEM
}
void free(void* p) { __libc_free(p); }
}
#endif

namespace embag::test {
namespace {

// Allocations made by `call` once it has run once.
template <class F>
long allocations_after_warm_up(F&& call) {
  call();
  allocations = 0;
  counting = true;
  for (int i = 0; i < 5; ++i) call();
  counting = false;
  return allocations.load();
}

#define SKIP_WITHOUT_COUNTER() \
  if (!EMBAG_COUNT_MALLOC) GTEST_SKIP() << "a sanitizer owns malloc in this build"

TEST(Allocation, CounterSeesAllocations) {
  SKIP_WITHOUT_COUNTER();
  static std::vector<std::vector<float>> kept;  // kept alive, so no allocation can be elided
  kept.reserve(16);
  const long n = allocations_after_warm_up([] { kept.emplace_back(1000); });
  EXPECT_EQ(n, 5) << "the counter must see a std::vector's allocation, or the other tests prove nothing";
}

// Calls big enough to split into blocks on several threads.
case_limits medium_calls() {
  case_limits limits;
  limits.max_rows = 5000;
  limits.max_bags = 400;
  limits.max_bag_length = 40;
  return limits;
}

class ForwardAllocation : public ::testing::TestWithParam<isa> {};

TEST_P(ForwardAllocation, NoneAfterWarmUp) {
  SKIP_WITHOUT_COUNTER();
  for (std::uint64_t seed = 1; seed <= 40; ++seed) {
    call_case c = random_case(seed, medium_calls());
    if (c.opts.max_norm && c.opts.max_norm_mode == max_norm_flavour::in_place) c.opts.max_norm_mode = max_norm_flavour::clip;
    SCOPED_TRACE(c.describe());
    std::vector<float> out(static_cast<std::size_t>(std::max<std::int64_t>(c.out_rows() * c.out_stride, 1)));
    std::vector<std::int64_t> argmax(c.opts.mode == mode::max ? c.out_rows() * c.dim : 0);
    for (int threads : {1, 0}) {
      options opts = c.opts;
      opts.execution.isa = GetParam();
      opts.execution.max_threads = threads;
      const bags batch = c.batch();
      EXPECT_EQ(allocations_after_warm_up([&] {
                  forward(c.view(), batch, opts, {out.data(), c.out_rows(), c.dim, c.out_stride}, argmax);
                }),
                0)
          << "threads=" << threads;
    }
  }
}

std::vector<isa> simd_isas() {
  std::vector<isa> list;
  for (isa i : available_isas())
    if (i != isa::reference) list.push_back(i);  // the reference may allocate: it is the oracle
  return list;
}

INSTANTIATE_TEST_SUITE_P(Available, ForwardAllocation, ::testing::ValuesIn(simd_isas()),
                         [](const auto& info) { return std::string(to_string(info.param)); });

TEST(Allocation, BackwardWithReusedWorkspaceAfterWarmUp) {
  SKIP_WITHOUT_COUNTER();
  for (std::uint64_t seed = 100; seed <= 120; ++seed) {
    const call_case c = random_case(seed, medium_calls());
    SCOPED_TRACE(c.describe());
    const call_results r = run_case(c, active_isa(), 0);
    if (active_isa() == isa::reference) GTEST_SKIP() << "the reference may allocate";
    const matrix_view<const float> dy{r.grad_output.data(), c.out_rows(), c.dim, c.dim};
    std::vector<float> dense = grad_start_for(c);
    workspace scratch;
    sparse_gradient sparse;
    EXPECT_EQ(allocations_after_warm_up([&] {
                backward_dense(c.batch(), c.opts, dy, {dense.data(), c.rows, c.dim, c.dim}, r.argmax, &scratch);
                backward_sparse(c.rows, c.batch(), c.opts, dy, sparse, r.argmax, &scratch);
              }),
              0);
  }
}

}  // namespace
}  // namespace embag::test
