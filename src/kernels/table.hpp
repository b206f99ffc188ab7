// The kernel table of one ISA: what src/dispatch reaches through kernels_<isa>().
#pragma once

#include "kernels/backward.hpp"
#include "kernels/forward.hpp"
#include "kernels/narrow.hpp"
#include "kernels/optimizer.hpp"
#include "kernels/roofline.hpp"
#include "kernels/scan.hpp"
#include "kernel_table.hpp"

namespace embag::detail::EMBAG_ISA_NS {

template <class Arch>
inline constexpr kernel_table kernels_for{&forward_block<Arch>, &narrow_rows<Arch>,    &backward_rows<Arch>,
                                          &backward_scatter<Arch>, &weights_grad<Arch>, &update_rows<Arch>,
                                          &gather_bags<Arch>,     &rewrite_update_rows<Arch>, &scan_indices<Arch>,
                                          &scan_offsets<Arch>};

}  // namespace embag::detail::EMBAG_ISA_NS
