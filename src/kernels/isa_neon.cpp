// The neon kernels: the one kernel source, instantiated for xsimd::neon64. The only translation unit
// compiled with this ISA's flags (see meson.build).
#define EMBAG_ISA_NS isa_neon
#include "kernels/table.hpp"

namespace embag::detail {
const kernel_table& kernels_neon() noexcept { return isa_neon::kernels_for<xsimd::neon64>; }
}  // namespace embag::detail
