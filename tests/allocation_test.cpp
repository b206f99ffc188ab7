// The hot path allocates nothing: after three warm-up calls, forward (every mode, inline and on TBB
// threads) and backward with a reused workspace and sparse_gradient make no heap allocation.
// Counted by replacing malloc and friends for this test binary (glibc allows it), which catches
// C++ `new`, std containers and TBB's internals alike. The same replacement fails large
// allocations on demand: memory running out is an errc::out_of_memory error that names what was
// being allocated, with nothing written.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>

#include "embag/embag.h"
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
std::atomic<std::size_t> failing_above{SIZE_MAX};  // allocations of more bytes return null
[[maybe_unused]] void count() {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
}
[[maybe_unused]] bool fails(std::size_t bytes) { return bytes > failing_above.load(std::memory_order_relaxed); }
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
  return fails(n) ? nullptr : __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t size) {
  count();
  return fails(n * size) ? nullptr : __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) {
  count();
  return fails(n) ? nullptr : __libc_realloc(p, n);
}
void* memalign(std::size_t alignment, std::size_t n) {
  count();
  return fails(n) ? nullptr : __libc_memalign(alignment, n);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) {
  count();
  return fails(n) ? nullptr : __libc_memalign(alignment, n);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t n) {
  count();
  *out = fails(n) ? nullptr : __libc_memalign(alignment, n);
  return *out ? 0 : 12;  // ENOMEM
}
void free(void* p) { __libc_free(p); }
}
#endif

namespace embag::test {
namespace {

// Allocations made by `call` once it has run three times. Not once: the first threaded call of a
// process initialises TBB (its task pools, a dlopen of its thread server: 31 allocations), and a
// call that finds the workers asleep runs inline while it wakes them (parallel.cpp), so the first
// call on them can be the second; the backward test, the first to use TBB here, counted TBB's
// start-up in about one run of six.
template <class F>
long allocations_after_warm_up(F&& call) {
  for (int i = 0; i < 3; ++i) call();
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
call_limits medium_calls() {
  call_limits limits;
  limits.max_rows = 5000;
  limits.max_bags = 400;
  limits.max_bag_length = 40;
  return limits;
}

class ForwardAllocation : public ::testing::TestWithParam<isa> {};

TEST_P(ForwardAllocation, NoneAfterWarmUp) {
  SKIP_WITHOUT_COUNTER();
  for (std::uint64_t seed = 1; seed <= 40; ++seed) {
    call_case c = random_call(seed, medium_calls());
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

INSTANTIATE_TEST_SUITE_P(EveryIsa, ForwardAllocation, ::testing::ValuesIn(simd_isas()),
                         [](const auto& info) { return std::string(to_string(info.param)); });

TEST(Allocation, BackwardWithReusedWorkspaceAfterWarmUp) {
  SKIP_WITHOUT_COUNTER();
  for (std::uint64_t seed = 100; seed <= 120; ++seed) {
    const call_case c = random_call(seed, medium_calls());
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

// Allocations of more than `bytes` fail while it lives.
struct memory_limit {
  explicit memory_limit(std::size_t bytes) { failing_above = bytes; }
  ~memory_limit() { failing_above = SIZE_MAX; }
};

// `call` throws errc::out_of_memory whose message names `what`.
template <class F>
void expect_out_of_memory(F&& call, const std::string& what) {
  try {
    call();
    ADD_FAILURE() << "no error; expected out of memory: " << what;
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::out_of_memory) << e.what();
    EXPECT_NE(std::string(e.what()).find("out of memory: " + what), std::string::npos) << e.what();
  }
}

TEST(Allocation, OutOfMemoryIsAnErrorNamingWhatWasBeingAllocatedAndWritesNothing) {
  SKIP_WITHOUT_COUNTER();
  constexpr std::int64_t rows = 1000, dim = 4, nnz = 200'000, num_bags = 100;
  std::vector<std::int64_t> indices(nnz), offsets(num_bags);
  for (std::int64_t j = 0; j < nnz; ++j) indices[j] = (j * 7) % rows;
  for (std::int64_t b = 0; b < num_bags; ++b) offsets[b] = b * (nnz / num_bags);
  const bags batch = bags::from_offsets(indices, offsets);
  const std::vector<float> dy(num_bags * dim, 1.0f);
  std::vector<float> dense(rows * dim, 7.0f);
  sparse_gradient sparse;
  sparse.rows = {42};
  const memory_limit limit(1 << 20);  // the row transpose of 200,000 indices needs 6 x 1.6 MB
  for (isa which : simd_isas()) {
    SCOPED_TRACE(to_string(which));
    options opts;
    opts.execution.isa = which;
    opts.execution.max_threads = 1;
    // dense sum and mean go straight from the bags: no allocation, so no failure
    std::vector<float> written = dense;
    backward_dense(batch, opts, {dy.data(), num_bags, dim}, {written.data(), rows, dim});
    EXPECT_NE(written, dense);
    // scale_grad_by_freq counts each row's uses: the row transpose
    options by_freq = opts;
    by_freq.scale_grad_by_freq = true;
    expect_out_of_memory([&] { backward_dense(batch, by_freq, {dy.data(), num_bags, dim}, {dense.data(), rows, dim}); },
                         "backward's row transpose of 200000 indices");
    EXPECT_EQ(dense, std::vector<float>(rows * dim, 7.0f));
    expect_out_of_memory([&] { backward_sparse(rows, batch, opts, {dy.data(), num_bags, dim}, sparse); },
                         "backward's row transpose of 200000 indices");
    EXPECT_EQ(sparse.rows, std::vector<std::int64_t>{42});
  }
  expect_out_of_memory([] { table(1'000'000, 64); }, "table(1000000, 64)");

  // The C ABI returns it as EMBAG_ERR_OUT_OF_MEMORY, with the same message.
  embag_bags c_bags{};
  c_bags.indices = indices.data();
  c_bags.num_indices = nnz;
  c_bags.index_type = EMBAG_INT64;
  c_bags.layout = EMBAG_BAGS_OFFSETS;
  c_bags.boundaries = offsets.data();
  c_bags.num_boundaries = num_bags;
  c_bags.boundary_type = EMBAG_INT64;
  const embag_const_matrix c_dy = {dy.data(), num_bags, dim, 0};
  const embag_matrix c_dense = {dense.data(), rows, dim, 0};
  embag_options c_opts;
  embag_options_init(&c_opts);
  c_opts.max_threads = 1;
  c_opts.flags = EMBAG_SCALE_GRAD_BY_FREQ;
  if (!simd_isas().empty()) {
    c_opts.isa = static_cast<std::int32_t>(simd_isas().front());
    EXPECT_EQ(embag_backward_dense(&c_bags, &c_opts, &c_dy, &c_dense, nullptr, 0), EMBAG_ERR_OUT_OF_MEMORY);
    EXPECT_NE(std::string(embag_last_error()).find("out of memory: backward's row transpose"), std::string::npos)
        << embag_last_error();
    EXPECT_EQ(dense, std::vector<float>(rows * dim, 7.0f));
  }
}

}  // namespace
}  // namespace embag::test
