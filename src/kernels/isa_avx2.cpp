// The avx2 kernels: the one kernel source, instantiated for xsimd::avx2. The only translation unit
// compiled with this ISA's flags (see meson.build).
#define EMBAG_ISA_NS isa_avx2
#include "kernels/table.hpp"

namespace embag::detail {
const kernel_table& kernels_avx2() noexcept { return isa_avx2::kernels_for<xsimd::avx2>; }
}  // namespace embag::detail
