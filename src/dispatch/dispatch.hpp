// Choosing the instruction set: detected once, forceable by EMBAG_ISA, force_isa() or per call.
#pragma once

#include <optional>

#include "kernel_table.hpp"

namespace embag::detail {

// The ISA a call runs on: the per-call choice if any (an error if unavailable), else the active one.
isa resolve_isa(std::optional<isa> requested);
// The kernels of an ISA other than reference.
const kernel_table& kernels_of(isa which) noexcept;
// The smallest and largest of n indices, scanned at the active ISA's width (scalar on reference).
index_extremes scan_indices(const void* indices, index_type kind, std::int64_t n) noexcept;
// Whether n offsets start at 0, never decrease and stay within nnz, and whether they rise, likewise.
offsets_order scan_offsets(const void* offsets, index_type kind, std::int64_t n, std::int64_t nnz) noexcept;

}  // namespace embag::detail
