// Validation's scan of the indices, in the kernels so that it runs at the ISA's width: the
// smallest and largest index, one pass (AVX-512 has 64-bit min/max; AVX2 compares 64-bit lanes;
// SSE2 and NEON take what their compiler makes of it). A scan that finds them out of range is
// followed by validate.cpp's scalar rescan, which names the first culprit.
#pragma once

#include <cstdint>

#include "request.hpp"

#ifndef EMBAG_ISA_NS
#error "kernels are compiled only through src/kernels/isa_<name>.cpp"
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

template <class Arch>
index_extremes scan_indices(const void* indices, index_type kind, std::int64_t n) noexcept {
  return kind == index_type::i32 ? index_extremes_of(static_cast<const std::int32_t*>(indices), n)
                                 : index_extremes_of(static_cast<const std::int64_t*>(indices), n);
}

}  // namespace embag::detail::EMBAG_ISA_NS
