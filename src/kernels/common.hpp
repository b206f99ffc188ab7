// Helpers shared by the kernels of one ISA. Included only by the kernel sources made from
// src/kernels/isa.cpp.in, each of which defines EMBAG_ISA_NS, so every inline function here gets a
// per-ISA name (no ODR sharing between translation units compiled with different instruction-set
// flags).
#pragma once

#include <cmath>
#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "request.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#ifndef EMBAG_ISA_NS
#error "kernels are compiled only through the per-ISA sources made from src/kernels/isa.cpp.in"
#endif

namespace embag::detail::EMBAG_ISA_NS {

// The end of bag b, given where it starts. Offsets were validated non-decreasing from 0.
// always_inline: called once per bag, it is the whole per-bag cost of one-index bags.
[[gnu::always_inline]] inline std::int64_t bag_end(const bag_source& bags, std::int64_t b, std::int64_t start) noexcept {
  switch (bags.layout) {
    case bag_layout::offsets:
      if (b + 1 >= bags.num_boundaries) return bags.nnz;
      return bags.boundary_kind == index_type::i32
                 ? static_cast<const std::int32_t*>(bags.boundaries)[b + 1]
                 : static_cast<const std::int64_t*>(bags.boundaries)[b + 1];
    case bag_layout::lengths:
      return start + (bags.boundary_kind == index_type::i32
                          ? static_cast<const std::int32_t*>(bags.boundaries)[b]
                          : static_cast<const std::int64_t*>(bags.boundaries)[b]);
    case bag_layout::fixed_length:
      return start + bags.fixed_length;
  }
  return start;
}

// Calls body(bag, begin, end) for each bag of the block, in order.
template <class Body>
inline void for_each_bag(const bag_source& bags, const bag_block& block, Body&& body) {
  const std::int64_t last = block.bag_end;  // a local: the body's stores may alias block for all the compiler knows
  std::int64_t start = block.index_begin;
  for (std::int64_t b = block.bag_begin; b < last; ++b) {
    const std::int64_t end = bag_end(bags, b, start);
    body(b, start, end);
    start = end;
  }
}

// Touches every cache line of a row so it is on its way before the loop reaches it (Write: the loop
// will store to it): one prefetch per 64 bytes from the row's start, and one of its last byte (its
// line, when the row starts mid-line). The same count for every row of a call, so the loop's exit
// is predicted; walking the lines the row spans took 3 or 4 trips by its alignment for 192-byte
// rows, and the mispredicted exits were a quarter of forward's time on D = 48 (`perf annotate`).
// always_inline: GCC 12's mod-ref analysis finds an out-of-line function that only prefetches free
// of side effects and deletes its calls, prefetches and all.
template <int Locality, int Write = 0>
[[gnu::always_inline]] inline void prefetch_row(const void* start, std::int64_t bytes) noexcept {
  const char* row = static_cast<const char*>(start);
  for (std::int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(row + offset, Write, Locality);
  __builtin_prefetch(row + bytes - 1, Write, Locality);
}

// prefetch_row for a row whose size is known at compile time: one prefetch per line from the row's
// start, unrolled (no loop, no alignment arithmetic: a loop there cost the roofline a third of its
// speed on DRAM tables). Rows that may start mid-line (line_aligned false) also touch the line
// holding their last byte.
template <int Locality, std::int64_t Bytes, int Write = 0>
[[gnu::always_inline]] inline void prefetch_fixed_row(const void* start, bool line_aligned) noexcept {
  const char* row = static_cast<const char*>(start);
  for (std::int64_t offset = 0; offset < Bytes; offset += 64) __builtin_prefetch(row + offset, Write, Locality);
  if (!line_aligned) __builtin_prefetch(row + Bytes - 1, Write, Locality);
}

template <class Index>
inline std::int64_t index_at(const bag_source& bags, std::int64_t position) noexcept {
  return static_cast<const Index*>(bags.indices)[position];
}

// Loads a byte of every cache line of a row: demand loads, independent of each other, which the
// core keeps in flight together, many rows at once when a loop does nothing else; a software
// prefetch may be dropped instead (on the Zen 4 guest, prefetches of an update's random DRAM rows,
// into L1 or L2, at any distance, changed nothing; in a stand-alone loop of the update's shape
// these loads took a 12.7 ms step to 9.2 ms). Not on every machine: the update learns which
// (choose_update_fetch).
// Every byte loaded is the row's own (a row need not start a line): one every 64, and the last.
inline void load_row_lines(const void* row, std::int64_t bytes) noexcept {
  const auto* byte = static_cast<const volatile unsigned char*>(row);
  for (std::int64_t offset = 0; offset < bytes; offset += 64) static_cast<void>(byte[offset]);
  static_cast<void>(byte[bytes - 1]);
}

// dst[0..n) = src[0..n), in batches.
// The vector loops below end at whole_batches(n): the scalar tails then run fewer than `lanes`
// times for all the compiler knows (with `d + lanes <= n` as the loop's test, GCC 12 warned that a
// tail of 2^62 iterations overflows, in every instantiation with a constant n).
template <class Arch>
inline std::int64_t whole_batches(std::int64_t n) noexcept {
  constexpr std::int64_t lanes = xsimd::batch<float, Arch>::size;
  return n - n % lanes;
}

template <class Arch>
inline void copy_floats(float* dst, const float* src, std::int64_t n) noexcept {
  using batch = xsimd::batch<float, Arch>;
  std::int64_t d = 0;
  for (const std::int64_t vector_end = whole_batches<Arch>(n); d < vector_end; d += batch::size)
    batch::load_unaligned(src + d).store_unaligned(dst + d);
  for (; d < n; ++d) dst[d] = src[d];
}

// The x86 ISAs, for the code written per ISA in intrinsics (here and in kernels/rows.hpp).
template <class Arch>
inline constexpr bool is_avx512 = std::is_base_of_v<xsimd::avx512f, Arch>;
template <class Arch>
inline constexpr bool is_avx2 = std::is_base_of_v<xsimd::avx2, Arch>;
template <class Arch>
inline constexpr bool is_sse2 = std::is_base_of_v<xsimd::sse2, Arch>;
// Each function written per ISA handles every ISA the registry builds; one it does not know fails
// to compile (static_assert on this) instead of computing some other way.
template <class Arch>
inline constexpr bool not_written_for = false;

#if defined(__x86_64__) || defined(__i386__)
// SSE2 has no fused multiply-add: x * y + z correctly rounded, two lanes at a time in double. The
// product of two floats is exact in double, so only the sum rounds before the float conversion;
// rounding twice goes wrong where the double sum lands on a float midpoint (tests/semantics_test.cpp
// has such cases). So the sum is rounded to odd instead (Boldo and Melquiond): its error, exact by
// Knuth's TwoSum, moves an inexact sum with an even significand to its odd neighbour on the error's
// side, and that rounds to float correctly (double's 53 bits are at least float's 24 + 2). NaN and
// infinite inputs leave a NaN error, which compares neither above nor below 0: no move. Without
// branches, so the time does not depend on the data: a midpoint check first, the fix-up only there,
// was faster on fp32 weighted sums (6.2 against 9.1 ms) but slower on int8 tables, whose exact sums
// often are midpoints (12.7 against 10.5 ms: mispredicted; `embag bench --rows 100000 --dim 64
// --isa sse2 --mode sum,weighted_sum --dtype f32,int8 --threads 1`).
// always_inline: GCC kept these out of line, called through the PLT once per batch (`perf report`).
[[gnu::always_inline]] inline __m128d fused_multiply_add_in_double(__m128d x, __m128d y, __m128d z) noexcept {
  const __m128d product = _mm_mul_pd(x, y);
  const __m128d sum = _mm_add_pd(product, z);
  const __m128d z_part = _mm_sub_pd(sum, product);
  const __m128d error = _mm_add_pd(_mm_sub_pd(product, _mm_sub_pd(sum, z_part)), _mm_sub_pd(z, z_part));
  const __m128i bits = _mm_castpd_si128(sum);
  const __m128d zero = _mm_setzero_pd();
  const __m128i inexact = _mm_castpd_si128(_mm_or_pd(_mm_cmplt_pd(error, zero), _mm_cmpgt_pd(error, zero)));
  const __m128i one = _mm_set1_epi64x(1);
  const __m128i even = _mm_sub_epi64(_mm_and_si128(bits, one), one);  // all ones where the last bit is 0
  // toward the error: one up in magnitude where error and sum have the same sign, else one down
  const __m128i signs_differ = _mm_srli_epi64(_mm_xor_si128(_mm_castpd_si128(error), bits), 63);
  const __m128i step = _mm_sub_epi64(one, _mm_add_epi64(signs_differ, signs_differ));
  return _mm_castsi128_pd(_mm_add_epi64(bits, _mm_and_si128(step, _mm_and_si128(inexact, even))));
}

[[gnu::always_inline]] inline __m128 fused_multiply_add_sse2(__m128 x, __m128 y, __m128 z) noexcept {
  const auto high = [](__m128 v) { return _mm_cvtps_pd(_mm_movehl_ps(v, v)); };
  const __m128d low_lanes = fused_multiply_add_in_double(_mm_cvtps_pd(x), _mm_cvtps_pd(y), _mm_cvtps_pd(z));
  const __m128d high_lanes = fused_multiply_add_in_double(high(x), high(y), high(z));
  return _mm_movelh_ps(_mm_cvtpd_ps(low_lanes), _mm_cvtpd_ps(high_lanes));
}
#endif

// x * y + z rounded once, on every ISA: what the rowwise dequantisation, the weighted sums and the
// gradient's scaled terms compute; one instruction where the ISA has it (AVX2 and AVX-512 with
// FMA3, NEON), fused_multiply_add_sse2 on SSE2. The build disables FMA contraction, so nothing
// else is fused and the kernels round exactly where the reference (std::fma) does.
template <class Arch>
[[gnu::always_inline]] inline xsimd::batch<float, Arch> fused_multiply_add(const xsimd::batch<float, Arch>& x,
                                                                           const xsimd::batch<float, Arch>& y,
                                                                           const xsimd::batch<float, Arch>& z) noexcept {
#if defined(__x86_64__) || defined(__i386__)
  if constexpr (is_avx512<Arch>)
    return _mm512_fmadd_ps(x, y, z);
  else if constexpr (is_avx2<Arch>)
    return _mm256_fmadd_ps(x, y, z);
  else if constexpr (is_sse2<Arch>)
    return fused_multiply_add_sse2(x, y, z);
  else {
    static_assert(not_written_for<Arch>, "fused_multiply_add: not written for this ISA");
  }
#elif defined(__aarch64__)
  return vfmaq_f32(z, x, y);
#endif
}

// dst[0..n) += scale * src[0..n), each element rounded once (fused_multiply_add), vectorised with a
// scalar tail; the same operations, in the same order per element, as the reference's plain loop.
// FromZero: dst starts at 0 and is only written (fma(scale, src, 0), so -0 becomes +0 exactly as
// when adding to a zeroed row).
template <class Arch, bool FromZero = false>
inline void add_scaled(float* dst, const float* src, float scale, std::int64_t n) noexcept {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::int64_t lanes = batch::size;
  const batch s(scale);
  const auto start = [&](std::int64_t d) { return FromZero ? batch(0.0f) : batch::load_unaligned(dst + d); };
  std::int64_t d = 0;
  for (const std::int64_t vector_end = whole_batches<Arch>(n); d < vector_end; d += lanes)
    fused_multiply_add<Arch>(s, batch::load_unaligned(src + d), start(d)).store_unaligned(dst + d);
  for (; d < n; ++d) dst[d] = std::fma(scale, src[d], FromZero ? 0.0f : dst[d]);
}

// a / b, correctly rounded as the reference's scalar division is. xsimd 8.1 divides floats on
// neon64 by a reciprocal estimate refined twice and a multiply, up to an ulp off (it found the mean
// of a weighted bag 1 ulp off on the first NEON run); AArch64 has an exact vector division.
template <class Arch>
inline xsimd::batch<float, Arch> divide(const xsimd::batch<float, Arch>& a, const xsimd::batch<float, Arch>& b) noexcept {
#if defined(__aarch64__)
  if constexpr (std::is_base_of_v<xsimd::neon64, Arch>) return vdivq_f32(a, b);
#endif
  return a / b;
}

// sqrt(a), correctly rounded as std::sqrt is. xsimd 8.1's float sqrt on neon64 is neon's reciprocal
// square-root estimate refined twice (an ulp off: Adagrad's step on the first NEON run of
// optim_test); AArch64 has an exact vector square root.
template <class Arch>
inline xsimd::batch<float, Arch> square_root(const xsimd::batch<float, Arch>& a) noexcept {
#if defined(__aarch64__)
  if constexpr (std::is_base_of_v<xsimd::neon64, Arch>) return vsqrtq_f32(a);
#endif
  return xsimd::sqrt(a);
}

template <class Arch>
inline float dot(const float* a, const float* b, std::int64_t n) noexcept {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::int64_t lanes = batch::size;
  batch acc(0.0f);
  std::int64_t d = 0;
  for (const std::int64_t vector_end = whole_batches<Arch>(n); d < vector_end; d += lanes)
    acc += batch::load_unaligned(a + d) * batch::load_unaligned(b + d);
  float sum = xsimd::hadd(acc);
  for (; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

}  // namespace embag::detail::EMBAG_ISA_NS
