// embag: tables sharded row-wise over the ranks of a communicator (MPI: embag/mpi.hpp).
//
// Rank r holds rows [partition.first(r), partition.first(r) + partition.count(r)) of an R-row
// table as a local table of its own (any dtype; in memory or mapped from its own file). Every rank
// calls each function below together with the others (they are collectives), each with its own
// batch of bags over the whole table's row numbers.
//
// Results are bitwise those of the single-node calls on the whole table:
//   forward            each rank's output is forward(whole table, its batch);
//   backward, update   the owned rows' gradient (and step) are those of one call on the whole table
//                      whose batch is every rank's batch concatenated in rank order (their dY
//                      stacked): the data-parallel step's gradient.
// How: forward brings each rank the rows its batch references (one per non-padding index,
// forward_exchange::rows) and runs the local forward on them, so every bag is summed by the same
// kernel in the same order (forward_exchange::partial_sums trades that for the least volume). Backward sends each owner, per bag that references its rows, the bag's dY row
// and its indices with their coefficients (the per-sample weight, divided by the bag's mean or
// sqrtn divisor as the local kernel divides it); the owner runs the local backward on the
// concatenated bags, which adds each row's terms in the single call's order. What that costs next
// to pooled partial sums: README "Scaling out".
//
// Errors: every rank validates its own arguments, then all agree (one reduction) before anything
// is sent: when any rank's arguments are bad, every rank throws the same embag::error (the lowest
// failing rank's, its message prefixed "rank N: ") and nothing is written on any rank.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "embag/embag.hpp"
#include "embag/optim.hpp"
#include "embag/quantize.hpp"

namespace embag::sharded {

// What the sharded calls need of a communication engine: collectives over a fixed group of ranks,
// called by every rank in the same order. embag/mpi.hpp implements it over an MPI communicator.
class communicator {
 public:
  virtual ~communicator() = default;
  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  // Personalised all-to-all: `send` holds this rank's block for rank 0, then rank 1, ...
  // (bytes_to[r] bytes each); `received` is replaced by every rank's block for this one, in rank
  // order, and bytes_from[r] by their sizes.
  virtual void all_to_all(std::span<const std::byte> send, std::span<const std::int64_t> bytes_to,
                          std::vector<std::byte>& received, std::vector<std::int64_t>& bytes_from) = 0;
  // The same exchange when this rank knows what each sends it (bytes_from[r] bytes from rank r, as
  // rank r's bytes_to says): the blocks written in rank order from the start of `into`, which holds
  // at least their sum, into memory the caller keeps (no buffer grown and zero-filled per call, no
  // copy out of it). This default exchanges through all_to_all and copies; errc::size_mismatch,
  // on this rank, when a rank sent other than bytes_from said. embag/mpi.hpp's receives in place.
  virtual void all_to_all_known(std::span<const std::byte> send, std::span<const std::int64_t> bytes_to,
                                std::span<const std::int64_t> bytes_from, std::span<std::byte> into);
  // values[i] = the smallest values[i] over every rank.
  virtual void all_min(std::span<std::int64_t> values) = 0;
  // Every rank's `bytes` replaced by root's.
  virtual void broadcast(std::vector<std::byte>& bytes, int root) = 0;
};

// Contiguous row ranges, one per rank: rank r owns [first(r), first(r + 1)).
class row_partition {
 public:
  // rows split as evenly as can be: the first rows % ranks ranks hold one row more.
  static row_partition even(std::int64_t rows, int ranks);
  // counts[r] rows for rank r, in rank order (0 allowed). errc::invalid_shape for a negative count.
  static row_partition from_counts(std::span<const std::int64_t> counts);

  std::int64_t rows() const noexcept { return first_.back(); }
  int ranks() const noexcept { return static_cast<int>(first_.size()) - 1; }
  std::int64_t first(int rank) const noexcept { return first_[static_cast<std::size_t>(rank)]; }
  std::int64_t count(int rank) const noexcept { return first(rank + 1) - first(rank); }
  int owner(std::int64_t row) const noexcept;  // row in [0, rows())
  std::span<const std::int64_t> boundaries() const noexcept { return first_; }  // ranks + 1 values

 private:
  std::vector<std::int64_t> first_{0};
};

// The partition of shards already split (embag shard-split's files, one per rank): each rank
// gives its own shard's row count, and every rank gets all of them, in rank order. A collective.
row_partition partition_of_shards(communicator& c, std::int64_t rows_here);

// A communicator and how the table's rows are split over its ranks (the same on every rank).
struct sharding {
  communicator* comm = nullptr;
  row_partition partition;
};

// What forward exchanges.
enum class forward_exchange : std::uint8_t {
  // Bitwise the single-node call: each non-padding index's row comes back from its owner (in the
  // table's dtype) and the local forward pools them. Bytes back per lookup: one row.
  rows,
  // The least volume: each owner pools its rows of each bag (sum, weighted sum) and sends back one
  // fp32 partial per (bag, owner); the requester adds them in rank order, then divides (mean,
  // sqrtn). Not bitwise: the fp32 sum is added in another order (within rounding of it). Modes
  // max and none exchange rows. Every rank passes the same exchange and pooled-sum modes alike.
  partial_sums,
};

// out = forward(whole table, batch): every mode and option of embag::forward on this rank's batch,
// indices numbered in the whole table, except max_norm in place (errc::invalid_option: it would
// write other ranks' rows; clip, the default flavour, is supported). `shard` is this rank's rows
// (partition.count(rank) of them; every rank's of the same dim and dtype).
void forward(const sharding& s, compressed_table_view shard, const bags& batch, const options& opts,
             matrix_view<float> out, std::span<std::int64_t> argmax = {},
             forward_exchange exchange = forward_exchange::rows);
// The same on an fp32 shard (embag::table's rows).
inline void forward(const sharding& s, table_view<const float> shard, const bags& batch, const options& opts,
                    matrix_view<float> out, std::span<std::int64_t> argmax = {},
                    forward_exchange exchange = forward_exchange::rows) {
  const std::int64_t stride = shard.row_stride == 0 ? shard.dim : shard.row_stride;
  forward(s, compressed_table_view{reinterpret_cast<const std::byte*>(shard.data), shard.rows, shard.dim,
                                   stride * std::int64_t{sizeof(float)}, dtype::f32},
          batch, opts, out, argmax, exchange);
}

// grad_shard (partition.count(rank) x dim) += this rank's rows of A^T.dY over every rank's batch.
// argmax: mode max, what sharded::forward produced (rows of the whole table). All ranks pass the
// same mode and scale_grad_by_freq.
void backward_dense(const sharding& s, const bags& batch, const options& opts, matrix_view<const float> grad_output,
                    matrix_view<float> grad_shard, std::span<const std::int64_t> argmax = {});

// The same gradient in sparse form: grad.rows are the rows of this rank's shard (numbered from 0
// in the shard: add partition.first(rank) for the whole table's) that any rank's batch references.
void backward_sparse(const sharding& s, const bags& batch, const options& opts, matrix_view<const float> grad_output,
                     sparse_gradient& grad, std::span<const std::int64_t> argmax = {});

// backward and the optimizer's step on this rank's rows (embag/optim.hpp), state rows those of the
// shard; stochastic rounding hashes each row's number in the whole table, as one node would. The
// summary counts this rank's rows (first_not_finite_row numbered in the shard).
update_summary backward_update(const sharding& s, trainable_table_view shard, const bags& batch, const options& opts,
                               matrix_view<const float> grad_output, const optimizer& opt, optimizer_state state = {},
                               std::span<const std::int64_t> argmax = {});

}  // namespace embag::sharded
