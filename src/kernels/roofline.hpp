// The roofline kernel: reads the rows of a run of indices with the same prefetch as forward and
// does nothing else, so forward's speed can be reported as a fraction of what the memory system
// delivers on the same rows, in the same process. Rows are read as fp32 (a compressed table's rows
// as the floats their bytes hold: see read_rows in src/api.cpp), prefetched over req.row_bytes.
#pragma once

#include "kernels/forward.hpp"

namespace embag::detail::EMBAG_ISA_NS {

// Rows are summed in runs of `run`, each into a scratch row (sink, dim floats) that is never
// read: forward's own loop without weights, padding, clipping or an output worth keeping. A
// tighter loop with one accumulator chain across the whole block read 25-35% slower than
// forward on DRAM tables here, which made it no ceiling.
// Kept out of line as forward's bag loop is: inlined into the run loop, the same sum read 25-35%
// slower on DRAM tables (GCC 12, Zen 4).
template <class Path, class Context>
[[gnu::noinline]] void read_run(const Context& c, std::int64_t begin, std::int64_t end) {
  Path::sum_bag(c, 0, begin, end);
}

template <class Arch, class Index, prefetch_level Prefetch, class Path>
float read_rows_in_runs(const forward_request& req, const bag_block& block, float* sink) {
  constexpr std::int64_t run = 32;
  forward_request r = req;
  r.mode = mode::sum;
  r.bags.weights = nullptr;
  r.padding_idx = no_padding;
  r.clip_max_norm = false;
  r.out = sink;
  r.out_stride = 0;
  r.argmax = nullptr;
  const forward_context<Arch, Index, dtype::f32, Prefetch> c{r};
  float folded = 0.0f;
  for (std::int64_t first = block.bag_begin; first < block.bag_end; first += run) {
    read_run<Path>(c, first, first + run < block.bag_end ? first + run : block.bag_end);
    folded += sink[0];
  }
  return folded;
}

template <class Arch, class Index>
float read_rows_dim(const forward_request& req, const bag_block& block, float* sink) {
  return with_path<Arch, Index, dtype::f32>(req, [&]<prefetch_level Prefetch, class Path>() {
    return read_rows_in_runs<Arch, Index, Prefetch, Path>(req, block, sink);
  });
}

template <class Arch>
float read_rows(const forward_request& req, const bag_block& block, float* sink) {
  return req.bags.index_kind == index_type::i32 ? read_rows_dim<Arch, std::int32_t>(req, block, sink)
                                                : read_rows_dim<Arch, std::int64_t>(req, block, sink);
}

}  // namespace embag::detail::EMBAG_ISA_NS
