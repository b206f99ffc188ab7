// The avx512 kernels: the one kernel source, instantiated for xsimd::avx512bw. The only translation unit
// compiled with this ISA's flags (see meson.build).
#define EMBAG_ISA_NS isa_avx512
#include "kernels/table.hpp"

namespace embag::detail {
const kernel_table& kernels_avx512() noexcept { return isa_avx512::kernels_for<xsimd::avx512bw>; }
}  // namespace embag::detail
