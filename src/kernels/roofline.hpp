// The roofline kernel: reads the rows of a run of indices with the same prefetch as forward and
// does nothing else, so forward's speed can be reported as a fraction of what the memory system
// delivers on the same rows, in the same process.
#pragma once

#include "kernels/forward.hpp"

namespace embag::detail::EMBAG_ISA_NS {

// Chunks batches per row, each into its own accumulator (no dependency chain between loads);
// Chunks = 0: any D, four accumulators in turn and a scalar tail.
template <class Arch, class Index, std::int64_t Chunks>
float read_rows_typed(const forward_context<Arch, Index>& c, const bag_block& block) {
  using batch = typename forward_context<Arch, Index>::batch;
  constexpr std::int64_t lanes = batch::size;
  constexpr std::int64_t accumulators = Chunks > 0 ? Chunks : 4;
  batch acc[accumulators];
  for (std::int64_t k = 0; k < accumulators; ++k) acc[k] = batch(0.0f);
  float tail = 0.0f;
  const std::int64_t dim = c.req.dim;
  for (std::int64_t p = block.bag_begin; p < block.bag_end; ++p) {
    c.prefetch(p);
    const float* x = c.row(c.indices[p]);
    if constexpr (Chunks > 0) {
      for (std::int64_t k = 0; k < Chunks; ++k) acc[k] += batch::load_unaligned(x + k * lanes);
    } else {
      std::int64_t d = 0;
      for (; d + lanes <= dim; d += lanes) acc[(d / lanes) % 4] += batch::load_unaligned(x + d);
      for (; d < dim; ++d) tail += x[d];
    }
  }
  for (std::int64_t k = 1; k < accumulators; ++k) acc[0] += acc[k];
  return xsimd::hadd(acc[0]) + tail;
}

template <class Arch, class Index>
float read_rows_dim(const forward_request& req, const bag_block& block) {
  const forward_context<Arch, Index> c{req};
  constexpr std::int64_t lanes = xsimd::batch<float, Arch>::size;
  switch (req.dim) {
    case 16: return read_rows_typed<Arch, Index, 16 / lanes>(c, block);
    case 32: return read_rows_typed<Arch, Index, 32 / lanes>(c, block);
    case 64: return read_rows_typed<Arch, Index, 64 / lanes>(c, block);
    case 128: return read_rows_typed<Arch, Index, 128 / lanes>(c, block);
    case 256: return read_rows_typed<Arch, Index, 256 / lanes>(c, block);
    default: return read_rows_typed<Arch, Index, 0>(c, block);
  }
}

template <class Arch>
float read_rows(const forward_request& req, const bag_block& block) {
  return req.bags.index_kind == index_type::i32 ? read_rows_dim<Arch, std::int32_t>(req, block)
                                                : read_rows_dim<Arch, std::int64_t>(req, block);
}

}  // namespace embag::detail::EMBAG_ISA_NS
