// THE forward kernel, written once, templated on the xsimd architecture, compiled once per ISA.
//
// Per bag, the same operations in the same order per output element as the reference, so every
// ISA agrees with it bit for bit (the build disables FMA contraction; the fused multiply-adds are
// explicit, fused_multiply_add in kernels/common.hpp):
//   sum:  acc = 0; acc = fma(w_j, x_j, acc) (or acc += x_j unweighted)  for each non-padding j in order
//   mean, sqrtn: the sum, then acc / bag_divisor (reduction.hpp), 0 when that is 0
//   max:  the first non-padding row, then x_j replaces acc where x_j > acc or x_j is a first NaN
//   none: one output row per index, a copy of the row (zeros for padding)
// where x_j is the table row, times max_norm_scale(row) when max_norm clips.
//
// Accumulators live in registers: for D in {16, 32, 64, 128, 256} in paths specialised per width,
// for other D of at least one batch in passes over runtime columns (for_each_column_pass); rows
// shorter than a batch accumulate in the output row. Rows are prefetched prefetch_rows positions ahead in the index stream. Rows of any
// element type are read through row_reader (kernels/rows.hpp), which dequantises them to fp32.
// What a call does not need costs little per row: the register-resident paths are instantiated
// per prefetch level (none, with no prefetch code at all; L1; L2; L2 in narrow passes), their
// prefetches unrolled per cache line of the fixed row size; the general paths read the level at
// run time (prefetch_level::automatic); bags at the end of the index stream prefetch nothing
// rather than clamp every row's look-ahead; sums compute the clip scale only when they clip.
#pragma once

#include <algorithm>
#include <utility>

#include "kernels/rows.hpp"

// For the lambdas holding a bag's row loop body: inlined into every loop that calls them, so that
// the accumulators they capture by reference stay in registers (a body called from two loops, the
// prefetching one and the plain one, was otherwise kept out of line, and the accumulators went
// through the stack on every row: half the speed on cache-resident tables).
#define EMBAG_ALWAYS_INLINE __attribute__((always_inline))

// Before each loop over the column batches of a pass (k < K, the count known at compile time):
// unrolled whole, so that the accumulators it indexes stay in registers. GCC's own heuristics
// left loops whose body branches (on the clip, read at run time) rolled; the array indexed by
// a runtime k then lived on the stack, a load and a store per batch per row, in every loop that
// touched it (`-fdump-tree-sra`: "needs to live in memory"; the max at D = 64 and the sums at
// D = 48, 100, 200).
#define EMBAG_EACH_BATCH _Pragma("GCC unroll 64")

namespace embag::detail::EMBAG_ISA_NS {

// The count and weights of a weighted bag's non-padding rows, for the divisor of a scaled mode
// (mean, sqrtn), in a pass of its own before the row loop: a running weight sum in the row loop put
// two chains of dependent float adds on the weighted sums' critical path, whatever the mode (`perf
// annotate`: a quarter of the weighted sum's time at D = 32). Unweighted bags count their rows in
// the row loop, an integer add. Out of line, and given values rather than the context: inlined,
// its loop grew the bag loops past what GCC inlines (forward_context's fields were then re-read
// from memory at every row, the unweighted sums a sixth slower at D = 32).
template <class Index>
[[gnu::noinline]] bag_tally tally_of_weights(const Index* indices, const float* weights, std::int64_t padding_idx,
                                             std::int64_t begin, std::int64_t end) noexcept {
  bag_tally tally;
  for (std::int64_t p = begin; p < end; ++p)
    if (indices[p] != padding_idx) tally_row(tally, weights[p]);
  return tally;
}

// Dim: the row length when the path fixes it at compile time (prefetches are then unrolled per
// cache line), else 0.
template <class Arch, class Index, dtype Type, prefetch_level Prefetch, std::int64_t Dim = 0>
struct forward_context {
  using batch = xsimd::batch<float, Arch>;
  using reader = row_reader<Arch, Type>;
  static constexpr std::int64_t lanes = batch::size;
  static constexpr dtype element_type = Type;
  static constexpr std::int64_t fixed_dim = Dim;  // 0: the row length is read at run time

  const forward_request& req;
  // What the row and bag loops read, copied out of req: a context copied into a loop's own frame
  // keeps them in registers, where through req every one was loaded again after each output store
  // (xsimd stores through may_alias vector types, which may alias req as far as the compiler knows:
  // a third of the instructions of a one-index bag, `perf annotate`).
  const Index* indices = static_cast<const Index*>(req.bags.indices);
  const std::byte* table = req.table;
  std::int64_t row_stride = req.row_stride;
  bool rows_line_aligned = req.rows_line_aligned;
  std::int64_t padding_idx = req.padding_idx;
  std::int64_t prefetch_rows = req.prefetch_rows;
  prefetch_level prefetch = req.prefetch;  // read per row by the paths that take the level at run time
  std::int64_t row_bytes = req.row_bytes;
  bool clip_max_norm = req.clip_max_norm;
  const float* weights = req.bags.weights;
  bag_scaling scaling = req.reduce.scaling;
  float* out = req.out;
  std::int64_t out_stride = req.out_stride, out_first_bag = req.out_first_bag;
  // Positions before this one have a row prefetch_rows ahead of them in the stream.
  std::int64_t prefetch_end = req.bags.nnz - req.prefetch_rows;

  const std::byte* row_address(std::int64_t index) const noexcept { return table + index * row_stride; }
  reader row(std::int64_t index) const noexcept { return reader(row_address(index), req.dim); }

  template <int Locality>
  [[gnu::always_inline]] void prefetch_row_at(const std::byte* row) const noexcept {
    if constexpr (Dim == 0) prefetch_row<Locality>(row, row_bytes);
    else prefetch_fixed_row<Locality, stored_row_bytes<Type>(Dim)>(row, rows_line_aligned);
  }

  // Prefetches the row of position p + prefetch_rows; p must be below prefetch_end.
  [[gnu::always_inline]] void prefetch_ahead(std::int64_t p) const noexcept {
    const auto ahead = [&] { return row_address(indices[p + prefetch_rows]); };
    if constexpr (Prefetch == prefetch_level::automatic) {  // the level of this call, at run time
      if (prefetch == prefetch_level::l1) prefetch_row_at<3>(ahead());
      else if (prefetch == prefetch_level::l2) prefetch_row_at<1>(ahead());
    } else if constexpr (Prefetch != prefetch_level::none) {
      prefetch_row_at<Prefetch == prefetch_level::l1 ? 3 : 1>(ahead());
    }
  }

  // Whether every position before `end` has a row to prefetch ahead of it: false for the bags at
  // the stream's end, which then prefetch nothing (their rows are the last on their way), and
  // for a call that prefetches nothing, also when its level is read at run time: its bags take
  // the plain loop, not the prefetching one testing the level per row.
  bool prefetches_through(std::int64_t end) const noexcept {
    if constexpr (Prefetch == prefetch_level::automatic)
      if (prefetch == prefetch_level::none) return false;
    return Prefetch != prefetch_level::none && end <= prefetch_end;
  }

  // each(p) for p in [begin, end), prefetching ahead when Prefetching (prefetches_through(end) must
  // hold then): no clamp per row.
  template <bool Prefetching, class Each>
  [[gnu::always_inline]] void for_each_position(std::int64_t begin, std::int64_t end, Each&& each) const {
    for (std::int64_t p = begin; p < end; ++p) {
      if constexpr (Prefetching) prefetch_ahead(p);
      each(p);
    }
  }

  // The max_norm clip scale of a row (1 when not clipping). Validation allows clipping on f32
  // tables only.
  float clip_scale(std::int64_t index) const noexcept {
    if constexpr (Type == dtype::f32)
      if (clip_max_norm)
        return max_norm_scale(reinterpret_cast<const float*>(row_address(index)), req.dim, req.max_norm, req.norm_type);
    return 1.0f;
  }

  float* out_row(std::int64_t bag) const noexcept { return out + (bag - out_first_bag) * out_stride; }

  // A bag's tally before its row loop: a weighted bag's for a scaled mode (tally_of_weights), else
  // empty, for the row loop to count.
  bag_tally tally_before_rows(std::int64_t begin, std::int64_t end) const noexcept {
    if (weights == nullptr || scaling == bag_scaling::none) return {};
    return tally_of_weights(indices, weights, padding_idx, begin, end);
  }

  // body(position, index, row, clip scale) for each non-padding index in [begin, end), in order,
  // prefetching ahead as it goes when asked. The scale is 1 unless Clip (the path clips).
  template <bool Prefetching, bool Clip, class Body>
  [[gnu::always_inline]] void for_each_row(std::int64_t begin, std::int64_t end, Body&& body) const {
    for_each_position<Prefetching>(begin, end, [&](std::int64_t p) EMBAG_ALWAYS_INLINE {
      const std::int64_t index = indices[p];
      if (index == padding_idx) return;
      body(p, index, row(index), Clip ? clip_scale(index) : 1.0f);
    });
  }

  // The position of the first non-padding index of [begin, end), end when there is none, having
  // prefetched ahead for the positions up to it as for_each_row_of_bag(prefetching, ...) would.
  [[gnu::always_inline]] std::int64_t first_row_of_bag(bool prefetching, std::int64_t begin, std::int64_t end) const {
    const bool ahead = prefetching && prefetches_through(end);
    for (std::int64_t p = begin; p < end; ++p) {
      if (ahead) prefetch_ahead(p);
      if (indices[p] != padding_idx) return p;
    }
    return end;
  }

  // for_each_row over a bag, prefetching ahead when `prefetching` and the stream has rows ahead of
  // the whole bag: one prefetching and one plain instantiation of the body, no test per row.
  template <bool Clip, class Body>
  [[gnu::always_inline]] void for_each_row_of_bag(bool prefetching, std::int64_t begin, std::int64_t end,
                                                  Body&& body) const {
    if (prefetching && prefetches_through(end)) for_each_row<true, Clip>(begin, end, body);
    else for_each_row<false, Clip>(begin, end, body);
  }
};

// Calls f.template operator()<Clip>() with Clip true when the call clips: only f32 tables can.
template <dtype Type, class F>
[[gnu::always_inline]] inline decltype(auto) with_clip(const forward_request& req, F&& f) {
  if constexpr (Type == dtype::f32)
    if (req.clip_max_norm) return f.template operator()<true>();
  return f.template operator()<false>();
}

// Elements [d, d + lanes) of a row, clipped the way the reference clips them: x * scale, rounded once.
template <class Arch, class Reader>
inline xsimd::batch<float, Arch> load_row(const Reader& row, std::int64_t d, bool clip, float scale) noexcept {
  auto x = row.load(d);
  return clip ? x * xsimd::batch<float, Arch>(scale) : x;
}

// Where x replaces the running max m: x > m, or x is NaN and m is not yet (NaN propagates, the
// first one wins; ties keep the first occurrence). No `x != x`: xsimd 8.1 compiles != to an
// ordered compare on AVX and AVX-512, false for NaN (xsimd issue 805); <= and == are ordered
// on every ISA.
template <class Arch>
inline xsimd::batch_bool<float, Arch> max_takes(const xsimd::batch<float, Arch>& x,
                                                const xsimd::batch<float, Arch>& m) noexcept {
  return (!(x <= m)) & (m == m);  // !(x <= m): x > m, or x or m is NaN
}

// x > m ? x : m, right for numbers only (NaN is the caller's to detect). x86's max instruction is
// exactly that, ties and +-0 included (it returns its second operand unless the first is greater);
// elsewhere a compare and a select. xsimd's AVX architectures do not derive from its SSE2 one:
// named apart (AVX2's max had been a compare and a blend, 0.56-0.65x of its sum on fp16 tables).
template <class Arch>
inline xsimd::batch<float, Arch> numbers_max(const xsimd::batch<float, Arch>& x,
                                             const xsimd::batch<float, Arch>& m) noexcept {
  if constexpr (std::is_base_of_v<xsimd::sse2, Arch> || std::is_base_of_v<xsimd::avx, Arch> ||
                std::is_base_of_v<xsimd::avx512f, Arch>)
    return xsimd::max(x, m);
  else
    return xsimd::select(x > m, x, m);
}

inline bool max_takes_scalar(float x, float m) noexcept { return x > m || (x != x && m == m); }

// Vector registers the compiler can keep accumulators in: 32 on AVX-512 and NEON, 16 on SSE2/AVX2.
template <class Arch>
inline constexpr std::int64_t vector_registers =
    std::is_base_of_v<xsimd::avx512f, Arch> || std::is_base_of_v<xsimd::neon, Arch> ? 32 : 16;

// Whether an add can take its second operand from unaligned memory, needing no register for the
// row it adds: AVX's and AVX-512's encodings (SSE2's addps faults on an unaligned operand, and
// NEON adds registers only).
template <class Arch>
inline constexpr bool adds_from_memory = std::is_base_of_v<xsimd::avx, Arch> || std::is_base_of_v<xsimd::avx512f, Arch>;

// Rows whose length is known only at run time, read in whole batches all the same: ceil(dim / lanes)
// batches per row, in passes of at most MaxBatches whose sums stay in registers, as even as possible;
// pass.template operator()<K>(first, column) for each, K a compile-time count: batch k of a pass
// starting at column `first` reads columns [column[k], column[k] + lanes). The last batch of a row ends
// at the row's end, overlapping the one before it when lanes does not divide dim. Both compute the
// columns they share with the same operations in the same order, so either store writes the same
// bits. (The other widths took 0.4-0.8 of their specialised neighbours' speed per byte when their
// output row was the accumulator: a load and a store per batch per row.) Needs reads_in_batches.
template <class Arch, dtype Type>
inline bool reads_in_batches(std::int64_t dim) noexcept {
  constexpr std::int64_t lanes = xsimd::batch<float, Arch>::size;
  // int4 elements pair up in bytes: a batch must start at an even column
  return dim >= lanes && (Type != dtype::int4_rowwise || dim % 2 == 0);
}

template <class Arch>
[[gnu::always_inline]] inline std::int64_t batch_column(std::int64_t first, std::int64_t k, std::int64_t dim) noexcept {
  constexpr std::int64_t lanes = xsimd::batch<float, Arch>::size;
  return std::min(first + k * lanes, dim - lanes);
}

template <class Arch, std::int64_t MaxBatches, class Pass>
[[gnu::always_inline]] inline void for_each_column_pass(std::int64_t dim, Pass&& pass) {
  constexpr std::int64_t lanes = xsimd::batch<float, Arch>::size;
  const std::int64_t batches = (dim + lanes - 1) / lanes;
  const std::int64_t passes = (batches + MaxBatches - 1) / MaxBatches;
  for (std::int64_t i = 0, done = 0; i < passes; ++i) {
    const std::int64_t count = (batches - done) / (passes - i);  // 1 to MaxBatches
    const auto pass_of = [&]<std::int64_t K>() EMBAG_ALWAYS_INLINE {
      std::int64_t column[K];
      EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) column[k] = batch_column<Arch>(done * lanes, k, dim);
      pass.template operator()<K>(done * lanes, column);
    };
    [&]<std::int64_t... K>(std::integer_sequence<std::int64_t, K...>) EMBAG_ALWAYS_INLINE {
      ((count == K + 1 ? (pass_of.template operator()<K + 1>(), true) : false) || ...);
    }(std::make_integer_sequence<std::int64_t, MaxBatches>{});
    done += count;
  }
}

// Max of a bag over its columns in passes, the running max in registers, as the sums:
// passes.template operator()<MaxBatches>(pass) calls pass.template operator()<K>(first, column)
// per pass of at most MaxBatches batches, as for_each_column_pass does (the fixed widths at
// compile-time columns). Exact: the reference's rule (max_takes) per element, and the position
// of each element's max tracked (as a float, exact below 2^24: longer bags with argmax take
// max_bag_by_element) for argmax when the call asks for it. Not Exact: numbers_max, and false
// when a NaN was seen (the output then needs the exact pass). One exact variant serves bags with
// and without argmax: a third variant cost compile time (CI's sanitizer lanes) for the rare bag
// holding a NaN.
template <bool Exact, class Ctx, class Passes>
[[gnu::always_inline]] inline bool max_bag_in_passes(const Ctx& c, std::int64_t bag, std::int64_t begin, std::int64_t end,
                                                     Passes&& passes) {
  using batch = typename Ctx::batch;
  using reader = typename Ctx::reader;
  using Arch = typename batch::arch_type;
  constexpr std::int64_t lanes = Ctx::lanes;
  const forward_request& r = c.req;
  float* out = c.out_row(bag);
  std::int64_t* argmax = r.argmax != nullptr ? r.argmax + bag * r.dim : nullptr;
  // The bag's first row starts the max, read before the row loop: no test per row for it.
  const std::int64_t start = c.first_row_of_bag(true, begin, end);
  if (start == end) {  // no row at all: zeros, argmax -1
    for (std::int64_t d = 0; d < r.dim; ++d) out[d] = 0.0f;
    if (argmax != nullptr)
      for (std::int64_t d = 0; d < r.dim; ++d) argmax[d] = -1;
    return true;
  }
  const std::int64_t start_index = c.indices[start];
  bool saw_nan_anywhere = false;
  // tracking keeps two registers per column batch
  passes.template operator()<vector_registers<Arch> / (Exact ? 4 : 2)>([&]<std::int64_t K>(std::int64_t first, const std::int64_t (&column)[K]) EMBAG_ALWAYS_INLINE {
    if (saw_nan_anywhere) return;  // decided by the first pass
    batch acc[K], where[K];
    // Not Exact: the sum of every value the pass reads, NaN when one of them is. Rarely also
    // when infinities of both signs (or sums overflowing to them) meet: the exact pass then
    // redoes a bag that did not need it. An add per batch, where a NaN test per batch and the
    // or of its mask took three instructions.
    batch nan_probe(0.0f);
    const reader start_row = c.row(start_index);
    const float start_scale = c.clip_scale(start_index);
    EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) {
      acc[k] = load_row<Arch>(start_row, column[k], c.clip_max_norm, start_scale);
      where[k] = batch(static_cast<float>(start - begin));
      if constexpr (!Exact) nan_probe += acc[k];
    }
    const auto take_row = [&](std::int64_t p, const reader& x, bool clip, float scale) EMBAG_ALWAYS_INLINE {
      const batch here(static_cast<float>(p - begin));
      batch row_sum;  // not Exact: the row's batches summed, then added to nan_probe
      EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) {
        const batch v = load_row<Arch>(x, column[k], clip, scale);
        if constexpr (Exact) {
          const auto takes = max_takes<Arch>(v, acc[k]);
          acc[k] = xsimd::select(takes, v, acc[k]);
          where[k] = xsimd::select(takes, here, where[k]);
        } else {
          acc[k] = numbers_max<Arch>(v, acc[k]);
          row_sum = k == 0 ? v : row_sum + v;
        }
      }
      if constexpr (!Exact) nan_probe += row_sum;
    };
    // positions up to start were prefetched for by first_row_of_bag; a row loop per clip, as
    // the sums' (with_clip), so that rows are not tested for it
    with_clip<Ctx::element_type>(r, [&]<bool clip>() EMBAG_ALWAYS_INLINE {
      c.template for_each_row_of_bag<clip>(first == 0, start + 1, end, [&](std::int64_t p, std::int64_t, const reader& x, float scale) EMBAG_ALWAYS_INLINE {
        take_row(p, x, clip, scale);
      });
    });
    if constexpr (!Exact)
      if (xsimd::any(xsimd::isnan(nan_probe))) {
        saw_nan_anywhere = true;
        return;
      }
    EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) acc[k].store_unaligned(out + column[k]);
    if (Exact && argmax != nullptr) {
      alignas(64) float positions[lanes];
      EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) {
        where[k].store_aligned(positions);
        for (std::int64_t l = 0; l < lanes; ++l) argmax[column[k] + l] = c.indices[begin + static_cast<std::int64_t>(positions[l])];
      }
    }
  });
  return !saw_nan_anywhere;
}

// With argmax, the exact max; without, the cheap one first and a bag holding a NaN redone exactly.
// The context copied into this frame, as sums copy it (forward_context).
template <class Ctx, class Passes>
[[gnu::always_inline]] inline void max_bag_of(const Ctx& context, std::int64_t bag, std::int64_t begin, std::int64_t end, Passes&& passes) {
  const Ctx c = context;
  if (c.req.argmax != nullptr || !max_bag_in_passes<false>(c, bag, begin, end, passes)) max_bag_in_passes<true>(c, bag, begin, end, passes);
}

// Register-resident path: D = Chunks * lanes. The columns are taken in groups small enough that
// their accumulators stay in registers (spilling them costs more than re-reading the bag's rows,
// which the first group has brought into L1); only the first group prefetches.
//
// Narrow (rows prefetched into L2 from DRAM): at most 256 bytes (4 cache lines) of each stored row
// per pass, and at least two passes over rows of 256 bytes or more: fewer lines of each row wanted
// at once kept more rows' misses in flight on DRAM tables, while on cache-resident tables the
// single pass is faster. Which wins on a machine is learnt per call class (plan.cpp's prefetch
// trials); compare them with `EMBAG_PREFETCH=l2:32` (narrow) against `l1:16` on
// `embag bench --dim 64|128 --mode sum`.
template <class Arch, class Index, dtype Type, prefetch_level Prefetch, bool Narrow, std::int64_t Chunks>
struct fixed_dim_forward {
  using ctx_t = forward_context<Arch, Index, Type, Prefetch, Chunks * xsimd::batch<float, Arch>::size>;
  static_assert(!Narrow || Prefetch == prefetch_level::l2, "narrow passes prefetch into L2");
  // max is instantiated once per width, its prefetch level read at run time: four copies of its
  // three variants cost more compile time (the sanitizer lanes of CI) than their speed was worth
  using max_path = fixed_dim_forward<Arch, Index, Type, prefetch_level::automatic, false, Chunks>;
  using reader = typename ctx_t::reader;
  using batch = typename ctx_t::batch;
  static constexpr std::int64_t lanes = ctx_t::lanes;
  static constexpr std::int64_t row_payload = Chunks * lanes * reader::bits / 8;  // stored bytes of the elements
  static constexpr std::int64_t pass_bytes = std::min<std::int64_t>(256, row_payload >= 256 ? row_payload / 2 : row_payload);
  static constexpr std::int64_t narrow_batches = pass_bytes * 8 / (lanes * reader::bits);
  static constexpr std::int64_t group_limit =
      Narrow && narrow_batches < vector_registers<Arch> / 2 ? narrow_batches : vector_registers<Arch> / 2;
  static constexpr std::int64_t sum_group = Chunks < group_limit ? Chunks : group_limit;
  static_assert(Chunks % sum_group == 0);
  // An unweighted fp32 sum that does not clip adds each row straight from memory where the ISA's
  // add takes an unaligned memory operand (AVX's encodings): then every register can hold an
  // accumulator, and D = 128 on AVX2 is one pass over the bag's rows, not two. Two passes took
  // 1.2x the time of FBGEMM's one (which uses all 16 registers) on a Zen 3 at R = 10k, D = 128.
  static constexpr std::int64_t plain_group_limit =
      !Narrow && Type == dtype::f32 && adds_from_memory<Arch> ? vector_registers<Arch> : group_limit;
  static constexpr std::int64_t plain_sum_group = Chunks < plain_group_limit ? Chunks : plain_group_limit;
  static_assert(Chunks % plain_sum_group == 0);

  // Weights and clipping chosen once per block, and each bag's sum inlined into the bag loop: with
  // one index per bag, a call and a dispatch per bag halved the lookups in flight from DRAM.
  // Unweighted sums that do not clip, the one-hot features of recommenders, take a loop of their
  // own where every bag holds one index: no boundary read and no row loop per bag, fewer
  // instructions per lookup and so more lookups in flight. It is a second copy of the sum, written
  // here, in the frame that holds the context, so that its fields stay in registers (through
  // for_each_bag's lambda they were loaded again for every row, after the output's stores). Only
  // the forward sum has one: in every kernel it made the kernel sources half again as slow to
  // compile, and CI's sanitizer lanes past their time.
  static void sum_bags(const ctx_t& context, const bag_block& block) {
    const ctx_t c = context;  // in this frame: its fields stay in registers (forward_context)
    const bool weighted = c.weights != nullptr;
    with_clip<Type>(c.req, [&]<bool clip>() {
      const auto each = [&]<bool weighted_>() {
        if constexpr (!weighted_ && !clip) {
          if (c.req.bags.one_index_each) {
            // a copy of its own, whose address nothing takes: where for_each_bag below is not
            // inlined, c's address escapes into it, and c's fields were loaded from the stack at
            // every row after the stores (`perf annotate`, fp32 at D = 64: the loop at 0.65 of the
            // roofline's speed, lookups at 0.81)
            const ctx_t one = c;
            const std::int64_t last = block.bag_end;
            for (std::int64_t bag = block.bag_begin, p = block.index_begin; bag < last; ++bag, ++p) sum_one_index(one, bag, p);
            return;
          }
        }
        for_each_bag(c.req.bags, block, [&](std::int64_t bag, std::int64_t begin, std::int64_t end) EMBAG_ALWAYS_INLINE {
          sum_bag_as<weighted_, clip>(c, bag, begin, end);
        });
      };
      weighted ? each.template operator()<true>() : each.template operator()<false>();
    });
  }

  // An unweighted bag of the one index at p, not clipped: its sum is 0 + the row (padding: 0), then
  // divided as the mode divides, the operations sum_bag_as does per element, so the same bits;
  // but each batch stored as soon as it is made, so one pass over the row whatever the registers
  // hold, where sum_bag_as's groups of columns read a row once per group (compressed rows: groups
  // of 8 batches, two passes over a D = 128 row; the loop took 1.25-1.8x the time of a plain
  // lookup of the same rows, `embag bench --pooling 1 --mode sum,lookup`).
  [[gnu::always_inline]] static void sum_one_index(const ctx_t& c, std::int64_t bag, std::int64_t p) {
    if (c.prefetches_through(p + 1)) c.prefetch_ahead(p);
    float* out = c.out_row(bag);
    const std::int64_t index = c.indices[p];
    if (index == c.padding_idx) {  // no row: the sum 0, and a divisor of 0 makes 0 as well
      EMBAG_EACH_BATCH for (std::int64_t k = 0; k < Chunks; ++k) batch(0.0f).store_unaligned(out + k * lanes);
      return;
    }
    const reader x = c.row(index);
    if (c.scaling != bag_scaling::none) {
      const batch divisor(bag_divisor(c.scaling, false, bag_tally{1}));
      EMBAG_EACH_BATCH for (std::int64_t k = 0; k < Chunks; ++k) divide(load_plus_zero(x, k * lanes), divisor).store_unaligned(out + k * lanes);
    } else {
      EMBAG_EACH_BATCH for (std::int64_t k = 0; k < Chunks; ++k) load_plus_zero(x, k * lanes).store_unaligned(out + k * lanes);
    }
  }

  template <bool weighted, bool clip>
  [[gnu::always_inline]] static void sum_bag_as(const ctx_t& c, std::int64_t bag, std::int64_t begin, std::int64_t end) {
    bag_tally tally = weighted ? c.tally_before_rows(begin, end) : bag_tally{};
    float* out = c.out_row(bag);
    constexpr std::int64_t group = weighted || clip ? sum_group : plain_sum_group;
    for (std::int64_t first = 0; first < Chunks; first += group) {
      batch acc[group];
      EMBAG_EACH_BATCH for (std::int64_t k = 0; k < group; ++k) acc[k] = batch(0.0f);
      const auto add_row = [&](std::int64_t p, std::int64_t, const reader& x, float scale) EMBAG_ALWAYS_INLINE {
        if constexpr (weighted) {
          const batch wb(c.weights[p]);
          EMBAG_EACH_BATCH for (std::int64_t k = 0; k < group; ++k) acc[k] = fused_multiply_add<Arch>(wb, load_row<Arch>(x, (first + k) * lanes, clip, scale), acc[k]);
        } else {
          EMBAG_EACH_BATCH for (std::int64_t k = 0; k < group; ++k) acc[k] += load_row<Arch>(x, (first + k) * lanes, clip, scale);
          if (first == 0) ++tally.count;
        }
      };
      // only the first group prefetches: the others find the bag's rows in L1
      c.template for_each_row_of_bag<clip>(first == 0, begin, end, add_row);
      if (c.scaling != bag_scaling::none) {
        const float divisor = bag_divisor(c.scaling, weighted, tally);
        const batch div(divisor);
        EMBAG_EACH_BATCH for (std::int64_t k = 0; k < group; ++k) acc[k] = divisor == 0.0f ? batch(0.0f) : divide(acc[k], div);
      }
      EMBAG_EACH_BATCH for (std::int64_t k = 0; k < group; ++k) acc[k].store_unaligned(out + (first + k) * lanes);
    }
  }

  // The groups of columns as passes at compile-time columns.
  static void max_bag(const ctx_t& c, std::int64_t bag, std::int64_t begin, std::int64_t end) {
    max_bag_of(c, bag, begin, end, []<std::int64_t MaxBatches>(auto&& pass) EMBAG_ALWAYS_INLINE {
      constexpr std::int64_t group = Chunks < MaxBatches ? Chunks : MaxBatches;
      static_assert(Chunks % group == 0);
      for (std::int64_t first = 0; first < Chunks; first += group) {
        std::int64_t column[group];
        EMBAG_EACH_BATCH for (std::int64_t k = 0; k < group; ++k) column[k] = (first + k) * lanes;
        pass.template operator()<group>(first * lanes, column);
      }
    });
  }
};

// General path, any D: accumulates in the output row itself (it stays in L1 for the bag).
template <class Arch, class Index, dtype Type, prefetch_level Prefetch>
struct any_dim_forward {
  using ctx_t = forward_context<Arch, Index, Type, Prefetch>;
  using max_path = any_dim_forward;
  using reader = typename ctx_t::reader;
  using batch = typename ctx_t::batch;
  static constexpr std::int64_t lanes = ctx_t::lanes;

  // The context copied as the fixed widths copy it (forward_context); here GCC keeps for_each_bag's
  // loop out of line all the same, and the row loop reloads the fields it reads (perf annotate, D = 48).
  static void sum_bags(const ctx_t& context, const bag_block& block) {
    const ctx_t c = context;
    for_each_bag(c.req.bags, block, [&](std::int64_t bag, std::int64_t begin, std::int64_t end) EMBAG_ALWAYS_INLINE { sum_bag(c, bag, begin, end); });
  }

  // Rows of at least one batch: the columns in passes, their sums in registers (for_each_column_pass),
  // as on the specialised widths; only the first pass prefetches and counts an unweighted bag's rows.
  // always_inline: one copy, in sum_bags' bag loop.
  [[gnu::always_inline]] static void sum_bag(const ctx_t& c, std::int64_t bag, std::int64_t begin, std::int64_t end) {
    const forward_request& r = c.req;
    const std::int64_t dim = r.dim;
    if (!reads_in_batches<Arch, Type>(dim)) return sum_bag_in_output(c, bag, begin, end);
    float* out = c.out_row(bag);
    const float* weights = c.weights;
    const bool weighted = weights != nullptr, clip = c.clip_max_norm;
    const bag_scaling scaling = c.scaling;
    bag_tally tally = c.tally_before_rows(begin, end);
    for_each_column_pass<Arch, vector_registers<Arch> / 2>(dim, [&]<std::int64_t K>(std::int64_t first, const std::int64_t (&column)[K]) EMBAG_ALWAYS_INLINE {
      batch acc[K];
      EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) acc[k] = batch(0.0f);
      const bool first_pass = first == 0;
      const auto add_row = [&](std::int64_t p, std::int64_t, const reader& x, float scale) EMBAG_ALWAYS_INLINE {
        if (weighted) {
          const batch wb(weights[p]);
          EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) acc[k] = fused_multiply_add<Arch>(wb, load_row<Arch>(x, column[k], clip, scale), acc[k]);
        } else {
          EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) acc[k] += load_row<Arch>(x, column[k], clip, scale);
        }
        if (first_pass && !weighted) ++tally.count;  // all the divisor of an unweighted bag reads
      };
      c.template for_each_row_of_bag<Type == dtype::f32>(first_pass, begin, end, add_row);
      if (scaling != bag_scaling::none) {
        const float divisor = bag_divisor(scaling, weighted, tally);
        EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) acc[k] = divisor == 0.0f ? batch(0.0f) : divide(acc[k], batch(divisor));
      }
      EMBAG_EACH_BATCH for (std::int64_t k = 0; k < K; ++k) acc[k].store_unaligned(out + column[k]);
    });
  }

  // Rows shorter than a batch (and int4 rows of odd length): the output row is the accumulator.
  [[gnu::noinline]] static void sum_bag_in_output(const ctx_t& c, std::int64_t bag, std::int64_t begin, std::int64_t end) {
    const forward_request& r = c.req;
    const std::int64_t dim = r.dim;
    float* out = c.out_row(bag);
    for (std::int64_t d = 0; d < dim; ++d) out[d] = 0.0f;
    const bool weighted = r.bags.weights != nullptr;
    bag_tally tally;
    const auto add_row = [&](std::int64_t p, std::int64_t, const reader& x, float scale) EMBAG_ALWAYS_INLINE {
      const float w = weighted ? r.bags.weights[p] : 1.0f;
      const batch wb(w);
      std::int64_t d = 0;
      for (; d + lanes <= dim; d += lanes) {
        const batch v = load_row<Arch>(x, d, r.clip_max_norm, scale);
        const batch o = batch::load_unaligned(out + d);
        (weighted ? fused_multiply_add<Arch>(wb, v, o) : o + v).store_unaligned(out + d);
      }
      for (; d < dim; ++d) {
        const float v = r.clip_max_norm ? x.at(d) * scale : x.at(d);
        out[d] = weighted ? std::fma(w, v, out[d]) : out[d] + v;
      }
      tally_row(tally, w);
    };
    c.template for_each_row_of_bag<Type == dtype::f32>(true, begin, end, add_row);
    if (r.reduce.scaling != bag_scaling::none) {
      const float divisor = bag_divisor(r.reduce.scaling, weighted, tally);
      for (std::int64_t d = 0; d < dim; ++d) out[d] = divided(out[d], divisor);
    }
  }

  // Rows of at least one batch: the columns in passes, as the sums (for_each_column_pass).
  static void max_bag(const ctx_t& c, std::int64_t bag, std::int64_t begin, std::int64_t end) {
    if (!reads_in_batches<Arch, Type>(c.req.dim)) return max_bag_by_element(c, bag, begin, end);
    max_bag_of(c, bag, begin, end, [&]<std::int64_t MaxBatches>(auto&& pass) EMBAG_ALWAYS_INLINE {
      for_each_column_pass<Arch, MaxBatches>(c.req.dim, pass);
    });
  }

  // Rows shorter than a batch (and int4 rows of odd length), and bags of 2^24 rows or more with
  // argmax (positions beyond a float's exact integers): element by element, in the output row.
  [[gnu::noinline]] static void max_bag_by_element(const ctx_t& c, std::int64_t bag, std::int64_t begin, std::int64_t end) {
    const forward_request& r = c.req;
    const std::int64_t dim = r.dim;
    float* out = c.out_row(bag);
    std::int64_t* argmax = r.argmax ? r.argmax + bag * dim : nullptr;
    bool started = false;
    const auto take_row = [&](std::int64_t, std::int64_t index, const reader& x, float scale) EMBAG_ALWAYS_INLINE {
      for (std::int64_t d = 0; d < dim; ++d) {
        const float v = r.clip_max_norm ? x.at(d) * scale : x.at(d);
        if (!started || max_takes_scalar(v, out[d])) {
          out[d] = v;
          if (argmax) argmax[d] = index;
        }
      }
      started = true;
    };
    c.template for_each_row_of_bag<Type == dtype::f32>(true, begin, end, take_row);
    if (!started) {
      for (std::int64_t d = 0; d < dim; ++d) out[d] = 0.0f;
      if (argmax)
        for (std::int64_t d = 0; d < dim; ++d) argmax[d] = -1;
    }
  }
};

// Plain lookups (mode none): each position's row copied into its own output row (zeros for
// padding), clipped as the reference clips it. Ctx is a path's context: the specialised widths
// copy in compile-time batches with their prefetch level fixed, as the pooled paths do, and the
// clip is chosen once per block. (With the width and the clip flag read through the request at
// every batch, which the output stores may alias for all the compiler knows, a D = 128 row took
// about 130 instructions, and 2,048 lookups of DRAM rows 1.4x the time of the same rows as
// one-index sums: R = 1M, `perf annotate`.)
template <class Arch, class Ctx>
inline void lookup_rows(const Ctx& context, const bag_block& block) {
  const Ctx c = context;  // in this frame: its fields stay in registers (forward_context)
  constexpr std::int64_t lanes = Ctx::lanes;
  const std::int64_t dim = Ctx::fixed_dim != 0 ? Ctx::fixed_dim : c.req.dim;
  const std::int64_t whole_batches_end = dim / lanes * lanes;
  with_clip<Ctx::element_type>(c.req, [&]<bool clip>() {
    const auto copy_row = [&](std::int64_t p) EMBAG_ALWAYS_INLINE {
      const std::int64_t index = c.indices[p];
      float* out = c.out_row(p);
      if (index == c.padding_idx) {
        for (std::int64_t d = 0; d < dim; ++d) out[d] = 0.0f;
        return;
      }
      const auto x = c.row(index);
      const float scale = clip ? c.clip_scale(index) : 1.0f;
      if constexpr (Ctx::fixed_dim != 0) {
        EMBAG_EACH_BATCH for (std::int64_t k = 0; k < Ctx::fixed_dim / lanes; ++k)
          load_row<Arch>(x, k * lanes, clip, scale).store_unaligned(out + k * lanes);
      } else {
        std::int64_t d = 0;
        for (; d < whole_batches_end; d += lanes) load_row<Arch>(x, d, clip, scale).store_unaligned(out + d);
        for (; d < dim; ++d) out[d] = clip ? x.at(d) * scale : x.at(d);
      }
    };
    // the positions with a row ahead of them to prefetch (none when the call prefetches nothing)
    const std::int64_t prefetched_end =
        c.prefetches_through(block.bag_begin) ? std::clamp(c.prefetch_end, block.bag_begin, block.bag_end) : block.bag_begin;
    c.template for_each_position<true>(block.bag_begin, prefetched_end, copy_row);
    c.template for_each_position<false>(prefetched_end, block.bag_end, copy_row);
  });
}

template <class Arch, class Index, dtype Type, class Path>
inline void pooled_bags(const typename Path::ctx_t& c, const bag_block& block) {
  using general = any_dim_forward<Arch, Index, Type, prefetch_level::automatic>;
  if (c.req.reduce.pool == pooling::sum) return Path::sum_bags(c, block);
  using max_path = typename Path::max_path;
  const typename max_path::ctx_t max_context{c.req};
  for_each_bag(c.req.bags, block, [&](std::int64_t bag, std::int64_t begin, std::int64_t end) {
    // float-tracked positions are exact only below 2^24
    if (c.req.argmax != nullptr && end - begin >= (std::int64_t{1} << 24))
      general::max_bag_by_element(typename general::ctx_t{c.req}, bag, begin, end);
    else
      max_path::max_bag(max_context, bag, begin, end);
  });
}

// Whether narrow passes group a width's columns otherwise than one pass into L2 does (its sums'
// groups are all the difference between the two): rows of at most 256 bytes, and any row on an
// ISA whose halved registers already hold a pass of 256 bytes (SSE2; the compressed types'
// short rows), are one group either way, and then the one-pass path (and roofline loop) serves a
// request for narrow passes: the same machine code, not a second copy of it. That is every fixed
// width on SSE2 and most compressed ones elsewhere: the sse2 kernels' object 7.6 -> 6.4 MB, their
// compile 331 -> 296 s (GCC 12, -O3; under AddressSanitizer 94 -> 81 MB, the time unchanged).
template <class Arch, class Index, dtype Type, std::int64_t Chunks>
inline constexpr bool narrow_passes_differ =
    fixed_dim_forward<Arch, Index, Type, prefetch_level::l2, true, Chunks>::sum_group !=
    fixed_dim_forward<Arch, Index, Type, prefetch_level::l2, false, Chunks>::plain_sum_group;

// Calls f.template operator()<Path>() with the path for this row length: registers for the
// specialised D, instantiated per prefetch (none, into L1, into L2, into L2 in narrow passes
// where those differ: a level read at run time in the row loop cost a quarter of the speed on
// DRAM tables, Zen 4); the output row otherwise, its prefetch level read at run time.
template <class Arch, class Index, dtype Type, class F>
inline decltype(auto) with_path(const forward_request& req, F&& f) {
  constexpr std::int64_t lanes = xsimd::batch<float, Arch>::size;
  const auto fixed = [&]<std::int64_t Chunks>() -> decltype(auto) {
    using level = prefetch_level;
    if (req.prefetch == level::none) return f.template operator()<fixed_dim_forward<Arch, Index, Type, level::none, false, Chunks>>();
    if (req.prefetch == level::l1) return f.template operator()<fixed_dim_forward<Arch, Index, Type, level::l1, false, Chunks>>();
    if constexpr (narrow_passes_differ<Arch, Index, Type, Chunks>)
      if (req.narrow_passes) return f.template operator()<fixed_dim_forward<Arch, Index, Type, level::l2, true, Chunks>>();
    return f.template operator()<fixed_dim_forward<Arch, Index, Type, level::l2, false, Chunks>>();
  };
  switch (req.dim) {
    case 16: return fixed.template operator()<16 / lanes>();
    case 32: return fixed.template operator()<32 / lanes>();
    case 64: return fixed.template operator()<64 / lanes>();
    case 128: return fixed.template operator()<128 / lanes>();
    case 256: return fixed.template operator()<256 / lanes>();
    default:
      return f.template operator()<any_dim_forward<Arch, Index, Type, prefetch_level::automatic>>();
  }
}

template <class Arch, class Index, dtype Type>
inline void forward_block_typed(const forward_request& req, const bag_block& block) {
  with_path<Arch, Index, Type>(req, [&]<class Path>() {
    if (req.reduce.pool == pooling::lookup) lookup_rows<Arch>(typename Path::ctx_t{req}, block);
    else pooled_bags<Arch, Index, Type, Path>(typename Path::ctx_t{req}, block);
  });
}

template <class Arch>
void forward_block(const forward_request& req, const bag_block& block) {
  with_element_type(req.element_type, [&]<dtype Type>() {
    if (req.bags.index_kind == index_type::i32) forward_block_typed<Arch, std::int32_t, Type>(req, block);
    else forward_block_typed<Arch, std::int64_t, Type>(req, block);
  });
}

}  // namespace embag::detail::EMBAG_ISA_NS
