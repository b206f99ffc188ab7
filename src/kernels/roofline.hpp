// The rooflines: the minimal loops forward and the fused update are measured against.
//
// The minimal gather. Per bag, the rows its offsets name
// are summed into registers and stored as the bag's output row, and nothing else happens: D is a
// compile-time constant for the specialised widths (other widths: forward's column passes, the last
// batch ending at the row's end), there is no validation (the call was validated
// once, when the roofline was built), no padding test, weight, clip or count, and the prefetch
// level is fixed per instantiation. Any kernel that beats it shows that it is no ceiling.
// Compressed rows are decoded through row_reader, as forward decodes them: the minimal gather of
// that element type.
#pragma once

#include "kernels/forward.hpp"
#include "kernels/optimizer.hpp"

namespace embag::detail::EMBAG_ISA_NS {

template <class Arch, class Index, dtype Type, prefetch_level Level, bool Narrow, std::int64_t Chunks>
struct minimal_gather {
  using batch = xsimd::batch<float, Arch>;
  using reader = row_reader<Arch, Type>;
  static constexpr std::int64_t lanes = batch::size;
  // As many accumulators as forward's unweighted sum keeps (every register where adds read memory,
  // else half of them), or in narrow passes forward's narrow group
  // (at most 256 bytes of each row per pass: on DRAM tables the faster read on some machines, so
  // a ceiling that lacked it was beaten by forward); wider rows take more passes over the bag, the
  // later ones finding its rows in L1 (or in L2, where the first pass's prefetches put them).
  static constexpr std::int64_t group = [] {
    if constexpr (Narrow) return fixed_dim_forward<Arch, Index, Type, prefetch_level::l2, true, Chunks>::sum_group;
    else if constexpr (Chunks == 0) return 0;  // any D: forward's column passes
    else return fixed_dim_forward<Arch, Index, Type, Level, false, Chunks>::plain_sum_group;
  }();

  const forward_request& req;
  // What the loops read, copied out of req, as forward_context copies it: run() works on its own
  // copy of this struct, whose fields then stay in registers, where through req each was loaded
  // again after every output store (xsimd's stores may alias req for all the compiler knows: the
  // kernels' loops, which had that fix and the gather not, beat it on one-index bags and lookups;
  // README, "Performance": the figures and how far the first driver overstated them).
  const Index* indices = static_cast<const Index*>(req.bags.indices);
  const std::byte* table = req.table;
  std::int64_t row_stride = req.row_stride, row_bytes = req.row_bytes, dim = req.dim;
  bool rows_line_aligned = req.rows_line_aligned;
  std::int64_t prefetch_rows = req.prefetch_rows;
  float* outputs = req.out;
  std::int64_t out_stride = req.out_stride;

  const std::byte* row_address(std::int64_t p) const noexcept { return table + indices[p] * row_stride; }

  template <bool Prefetching>
  [[gnu::always_inline]] void prefetch(std::int64_t p) const noexcept {
    constexpr int locality = Level == prefetch_level::l1 ? 3 : 1;
    if constexpr (!Prefetching || Level == prefetch_level::none) return;
    else if constexpr (Chunks == 0) prefetch_row<locality>(row_address(p + prefetch_rows), row_bytes);
    else prefetch_fixed_row<locality, stored_row_bytes<Type>(Chunks * lanes)>(row_address(p + prefetch_rows), rows_line_aligned);
  }

  template <bool Prefetching>
  [[gnu::always_inline]] void bag(float* out, std::int64_t begin, std::int64_t end) const noexcept {
    if constexpr (Chunks == 0) {
      if (reads_in_batches<Arch, Type>(dim)) {  // any other D of a batch or more: passes as forward's
        for_each_column_pass<Arch, vector_registers<Arch> / 2>(dim, [&]<std::int64_t K>(std::int64_t first, const std::int64_t (&column)[K]) EMBAG_ALWAYS_INLINE {
          batch acc[K];
          EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) acc[k] = batch(0.0f);
          for (std::int64_t p = begin; p < end; ++p) {
            if (first == 0) prefetch<Prefetching>(p);
            const reader x(row_address(p), dim);
            EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) acc[k] += x.load(column[k]);
          }
          EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) acc[k].store_unaligned(out + column[k]);
        });
        return;
      }
      // shorter rows: the output row is the accumulator
      for (std::int64_t d = 0; d < dim; ++d) out[d] = 0.0f;
      for (std::int64_t p = begin; p < end; ++p) {
        prefetch<Prefetching>(p);
        const reader x(row_address(p), dim);
        std::int64_t d = 0;
        for (; d + lanes <= dim; d += lanes) (batch::load_unaligned(out + d) + x.load(d)).store_unaligned(out + d);
        for (; d < dim; ++d) out[d] += x.at(d);
      }
    } else {
      for (std::int64_t first = 0; first < Chunks; first += group) {
        batch acc[group];
        EMBAG_EACH_BATCH for (std::int64_t k = 0; k < group; ++k) acc[k] = batch(0.0f);
        for (std::int64_t p = begin; p < end; ++p) {
          if (first == 0) prefetch<Prefetching>(p);
          const reader x(row_address(p), dim);
          EMBAG_EACH_BATCH for (std::int64_t k = 0; k < group; ++k) acc[k] += x.load((first + k) * lanes);
        }
        EMBAG_EACH_BATCH for (std::int64_t k = 0; k < group; ++k) acc[k].store_unaligned(out + (first + k) * lanes);
      }
    }
  }

  // A bag of the one index at p: its row copied, each batch stored as soon as it is read, one pass
  // over the row whatever the registers hold: the least a one-index bag or a lookup does (forward's
  // sum adds the row to 0, for the reference's +0 where a row holds -0; a lookup needs no add).
  template <bool Prefetching>
  [[gnu::always_inline]] void one_index_bag(float* out, std::int64_t p) const noexcept {
    prefetch<Prefetching>(p);
    const reader x(row_address(p), dim);
    EMBAG_EACH_BATCH for (std::int64_t k = 0; k < Chunks; ++k) x.load(k * lanes).store_unaligned(out + k * lanes);
  }

  // Bags [block.bag_begin, block.bag_end), given by offsets of type Index (the last bag ends at nnz).
  void run(const bag_block& block) const noexcept {
    const minimal_gather g = *this;  // in this frame: its fields stay in registers
    const Index* offsets = static_cast<const Index*>(req.bags.boundaries);
    const std::int64_t prefetch_end = Level == prefetch_level::none ? 0 : req.bags.nnz - req.prefetch_rows;
    if constexpr (Chunks != 0) {
      if (req.bags.one_index_each) {  // bag b is position p = b + to_position
        // the positions with a row to prefetch ahead, then the rest: no test per row, as forward's
        // lookups read them (a ceiling must not do more per row than the loops it bounds)
        const std::int64_t to_position = block.index_begin - block.bag_begin;
        const std::int64_t end = block.bag_end + to_position;
        const std::int64_t prefetched_end = std::clamp(prefetch_end, block.index_begin, end);
        for (std::int64_t p = block.index_begin; p < prefetched_end; ++p)
          g.one_index_bag<true>(g.outputs + (p - to_position) * g.out_stride, p);
        for (std::int64_t p = prefetched_end; p < end; ++p)
          g.one_index_bag<false>(g.outputs + (p - to_position) * g.out_stride, p);
        return;
      }
    }
    const std::int64_t last = req.bags.num_boundaries - 1, nnz = req.bags.nnz;  // last: the bag that ends at nnz
    for (std::int64_t b = block.bag_begin; b < block.bag_end; ++b) {
      const std::int64_t begin = offsets[b], end = b < last ? offsets[b + 1] : nnz;
      float* row_out = g.outputs + b * g.out_stride;
      if (end <= prefetch_end) g.bag<true>(row_out, begin, end);
      else g.bag<false>(row_out, begin, end);
    }
  }
};

template <class Arch, class Index, dtype Type, prefetch_level Level, bool Narrow = false>
void gather_bags_at(const forward_request& req, const bag_block& block) {
  constexpr std::int64_t lanes = xsimd::batch<float, Arch>::size;
  // narrow passes where forward's differ from one pass (narrow_passes_differ), as forward reads
  const auto fixed = [&]<std::int64_t Chunks>() {
    minimal_gather<Arch, Index, Type, Level, Narrow && narrow_passes_differ<Arch, Index, Type, Chunks>, Chunks>{req}.run(block);
  };
  switch (req.dim) {
    case 16: return fixed.template operator()<16 / lanes>();
    case 32: return fixed.template operator()<32 / lanes>();
    case 64: return fixed.template operator()<64 / lanes>();
    case 128: return fixed.template operator()<128 / lanes>();
    case 256: return fixed.template operator()<256 / lanes>();
    default: return minimal_gather<Arch, Index, Type, Level, false, 0>{req}.run(block);  // no passes: the output row accumulates
  }
}

// The request's indices and offsets share one index type; its prefetch is resolved (never automatic).
template <class Arch>
void gather_bags(const forward_request& req, const bag_block& block) {
  with_element_type(req.element_type, [&]<dtype Type>() {
    const auto at_level = [&]<class Index>() {
      switch (req.prefetch) {
        case prefetch_level::l1: return gather_bags_at<Arch, Index, Type, prefetch_level::l1>(req, block);
        case prefetch_level::l2:
          if (req.narrow_passes) return gather_bags_at<Arch, Index, Type, prefetch_level::l2, true>(req, block);
          return gather_bags_at<Arch, Index, Type, prefetch_level::l2>(req, block);
        default: return gather_bags_at<Arch, Index, Type, prefetch_level::none>(req, block);
      }
    };
    if (req.bags.index_kind == index_type::i32) at_level.template operator()<std::int32_t>();
    else at_level.template operator()<std::int64_t>();
  });
}

// The minimal update: the bytes of [row, row + bytes) loaded and stored back unchanged, xor'ed
// with `zero`, a 0 the compiler cannot see (it comes from the caller), so that neither the loads
// nor the stores are elided; integer lanes, so that every bit pattern of any element type stays
// as it was.
template <class Arch>
[[gnu::always_inline]] inline void rewrite_bytes(std::byte* row, std::int64_t bytes, std::uint32_t zero) noexcept {
  using words = xsimd::batch<std::uint32_t, Arch>;
  constexpr std::int64_t step = words::size * 4;
  std::int64_t b = 0;
  for (; b + step <= bytes; b += step) {
    auto* at = reinterpret_cast<std::uint32_t*>(row + b);
    (words::load_unaligned(at) ^ words(zero)).store_unaligned(at);
  }
  for (; b < bytes; ++b) row[b] ^= static_cast<std::byte>(zero);
}

// An update's unique rows [unique_begin, unique_end), as its step walks them (for_each_update_chunk:
// the same chunks, fetch and order), each table row and state row rewritten unchanged and nothing
// else done: no gradient, arithmetic, check or tally. Any step on these rows moves at least these
// bytes.
template <class Arch>
void rewrite_update_rows(const update_request& q, std::int64_t unique_begin, std::int64_t unique_end, std::uint32_t zero) {
  const std::int64_t* const unique_rows = q.gradient.transpose.unique_rows;
  const std::int64_t element_bytes = q.table_type == dtype::f32 ? 4 : 2;
  const std::int64_t row_bytes = q.gradient.dim * element_bytes;
  const std::int64_t state_bytes = (q.kind == optimizer_kind::adagrad ? q.gradient.dim : 1) * std::int64_t{sizeof(float)};
  const auto walk = [&]<bool Stateful>() {
    for_each_update_chunk<Stateful>(q, unique_begin, unique_end, [&](std::int64_t first, std::int64_t last) EMBAG_ALWAYS_INLINE {
      for (std::int64_t u = first; u < last; ++u) {
        const std::int64_t row = unique_rows[u];
        rewrite_bytes<Arch>(q.table + row * q.table_stride * element_bytes, row_bytes, zero);
        if constexpr (Stateful)
          rewrite_bytes<Arch>(reinterpret_cast<std::byte*>(q.state + row * q.state_stride), state_bytes, zero);
      }
    });
  };
  if (q.state != nullptr) walk.template operator()<true>();
  else walk.template operator()<false>();
}

}  // namespace embag::detail::EMBAG_ISA_NS
