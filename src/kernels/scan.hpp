// Validation's scans of the indices and offsets, in the kernels so that they run at the ISA's
// width: the smallest and largest index, and whether the offsets are in order (and rising), one pass each
// (AVX-512 has 64-bit min/max and compares; AVX2 compares 64-bit lanes; SSE2 and NEON take what
// their compiler makes of it). A scan that fails is followed by validate.cpp's scalar walk, which
// names the first culprit. src/dispatch compiles them once more, with the baseline flags, for the
// reference ISA.
#pragma once

#include <cstdint>

#include "request.hpp"

#ifndef EMBAG_ISA_NS
#error "kernels are compiled only through the per-ISA sources made from src/kernels/isa.cpp.in"
#endif

namespace embag::detail::EMBAG_ISA_NS {

// A plain min/max reduction: the compiler vectorises it with this translation unit's flags
// (vpminsq / vpmaxsq on AVX-512).
template <class Index>
inline index_extremes index_extremes_of(const Index* indices, std::int64_t n) noexcept {
  if (n == 0) return {};
  Index lo = indices[0], hi = indices[0];
  for (std::int64_t j = 0; j < n; ++j) {
    lo = indices[j] < lo ? indices[j] : lo;
    hi = indices[j] > hi ? indices[j] : hi;
  }
  return {lo, hi};
}

// Offsets start at 0, never decrease and end within nnz (so all of them are within it); rising
// when none repeats the one before. The drops and repeats are counted, sums the compiler vectorises
// (a loop and-ing booleans stayed scalar, and took a twelfth of the time of one-index calls:
// `perf record` on `embag bench --pooling 1`).
template <class T>
inline offsets_order offsets_order_of(const T* offsets, std::int64_t n, std::int64_t nnz) noexcept {
  if (n == 0) return {true, true};
  std::int64_t drops = 0, repeats = 0;
  for (std::int64_t b = 1; b < n; ++b) {
    drops += offsets[b] < offsets[b - 1];
    repeats += offsets[b] == offsets[b - 1];
  }
  return {offsets[0] == 0 && drops == 0 && static_cast<std::int64_t>(offsets[n - 1]) <= nnz, repeats == 0};
}

template <class Arch>
offsets_order scan_offsets(const void* offsets, index_type kind, std::int64_t n, std::int64_t nnz) noexcept {
  return kind == index_type::i32 ? offsets_order_of(static_cast<const std::int32_t*>(offsets), n, nnz)
                                 : offsets_order_of(static_cast<const std::int64_t*>(offsets), n, nnz);
}

template <class Arch>
index_extremes scan_indices(const void* indices, index_type kind, std::int64_t n) noexcept {
  return kind == index_type::i32 ? index_extremes_of(static_cast<const std::int32_t*>(indices), n)
                                 : index_extremes_of(static_cast<const std::int64_t*>(indices), n);
}

}  // namespace embag::detail::EMBAG_ISA_NS
