// The sse2 kernels: the one kernel source, instantiated for xsimd::sse2. The only translation unit
// compiled with this ISA's flags (see meson.build).
#define EMBAG_ISA_NS isa_sse2
#include "kernels/table.hpp"

namespace embag::detail {
const kernel_table& kernels_sse2() noexcept { return isa_sse2::kernels_for<xsimd::sse2>; }
}  // namespace embag::detail
