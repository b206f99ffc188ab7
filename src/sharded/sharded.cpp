// Row-wise sharded calls (embag/sharded.hpp). Each call: every rank validates its own arguments
// against the whole table (the library's own validation, on a stand-in of the whole table), the
// ranks agree, the requests go to the rows' owners, and the library's local calls run on what
// arrived. The communication engine is only the communicator interface.
#include "embag/sharded.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <numeric>
#include <optional>
#include <string>
#include <type_traits>

#include "call.hpp"
#include "reduction.hpp"
#include "validate.hpp"

namespace embag::sharded {

row_partition row_partition::even(std::int64_t rows, int ranks) {
  if (rows < 0 || ranks <= 0)
    throw error(errc::invalid_shape, "row_partition::even: rows = " + std::to_string(rows) + " and ranks = " +
                                         std::to_string(ranks) + " must be >= 0 and > 0");
  std::vector<std::int64_t> counts(static_cast<std::size_t>(ranks), rows / ranks);
  for (std::int64_t r = 0; r < rows % ranks; ++r) ++counts[static_cast<std::size_t>(r)];
  return from_counts(counts);
}

row_partition row_partition::from_counts(std::span<const std::int64_t> counts) {
  if (counts.empty()) throw error(errc::invalid_shape, "row_partition::from_counts: counts is empty (no ranks)");
  row_partition p;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    if (counts[r] < 0 || counts[r] > std::numeric_limits<std::int64_t>::max() - p.first_.back())
      throw error(counts[r] < 0 ? errc::invalid_shape : errc::size_overflow,
                  "row_partition::from_counts: counts[" + std::to_string(r) + "] = " + std::to_string(counts[r]) +
                      (counts[r] < 0 ? " is negative" : " overflows the row count"));
    p.first_.push_back(p.first_.back() + counts[r]);
  }
  return p;
}

namespace {

// The rank owning row: how many of the ranks' first rows after rank 0's are <= row. A binary
// search whose steps are conditional moves, not branches: the calls' rows are random over the
// ranks, and std::upper_bound's mispredicted branches made the partial-sums forward's bucketing
// of its indices twice as slow on 2 ranks as on 1.
int owner_in(std::span<const std::int64_t> boundaries, std::int64_t row) noexcept {
  const std::int64_t* const after_first = boundaries.data() + 1;
  std::size_t candidates = boundaries.size() - 2;  // the first rows of ranks 1 .. ranks - 1
  if (candidates == 0) return 0;
  const std::int64_t* base = after_first;
  while (candidates > 1) {
    const std::size_t half = candidates / 2;
    base = base[half] <= row ? base + half : base;
    candidates -= half;
  }
  return static_cast<int>(base - after_first) + (*base <= row ? 1 : 0);
}

}  // namespace

int row_partition::owner(std::int64_t row) const noexcept { return owner_in(first_, row); }

void communicator::all_to_all_known(std::span<const std::byte> send, std::span<const std::int64_t> bytes_to,
                                    std::span<const std::int64_t> bytes_from, std::span<std::byte> into) {
  std::vector<std::byte> received;
  std::vector<std::int64_t> sizes;
  all_to_all(send, bytes_to, received, sizes);
  if (!std::equal(sizes.begin(), sizes.end(), bytes_from.begin(), bytes_from.end()) || received.size() > into.size())
    throw error(errc::size_mismatch, "all_to_all_known: rank " + std::to_string(rank()) + " received " +
                                         std::to_string(received.size()) + " bytes, not the sizes it was told or more than its " +
                                         std::to_string(into.size()) + "-byte buffer holds");
  if (!received.empty()) std::memcpy(into.data(), received.data(), received.size());
}

row_partition partition_of_shards(communicator& c, std::int64_t rows_here) {
  const std::vector<std::int64_t> mine(static_cast<std::size_t>(c.size()), rows_here);
  const std::vector<std::int64_t> bytes_to(mine.size(), std::int64_t{sizeof(std::int64_t)});
  std::vector<std::byte> received;
  std::vector<std::int64_t> bytes_from;
  c.all_to_all(std::as_bytes(std::span<const std::int64_t>(mine)), bytes_to, received, bytes_from);
  std::vector<std::int64_t> counts(mine.size());
  std::memcpy(counts.data(), received.data(), received.size());
  return row_partition::from_counts(counts);
}

namespace {

using detail::element_at;

// What every rank must agree on, hashed (FNV-1a) into 62 bits so that its negation fits too.
class fingerprint {
 public:
  fingerprint& add(std::int64_t v) noexcept {
    for (int i = 0; i < 8; ++i) hash_ = (hash_ ^ ((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xff)) * 1099511628211ull;
    return *this;
  }
  std::int64_t value() const noexcept { return static_cast<std::int64_t>(hash_ >> 2); }

 private:
  std::uint64_t hash_ = 14695981039346656037ull;
};

fingerprint of_partition(const row_partition& p) {
  fingerprint f;
  for (std::int64_t b : p.boundaries()) f.add(b);
  return f;
}

communicator& communicator_of(const sharding& s) {
  if (s.comm == nullptr) throw error(errc::null_pointer, "sharding.comm is null");
  return *s.comm;
}

// Runs this rank's checks, then agrees with every other rank in one reduction: when any rank's
// checks failed, every rank throws the lowest failing rank's error (memory running out: "out of
// memory while <doing>"); when the ranks' fingerprints of what they must share differ, every rank
// throws that. Nothing is sent before this.
template <class Check>
void agree(communicator& c, const fingerprint& shared, const char* shared_what, const char* doing, Check&& check) {
  std::optional<error> failure;
  try {
    check();
  } catch (const error& e) {
    failure = e;
  } catch (const std::bad_alloc&) {
    failure = error(errc::out_of_memory, std::string("out of memory while ") + doing);
  }
  std::int64_t agreed[3] = {failure ? c.rank() : c.size(), shared.value(), -shared.value()};
  c.all_min(agreed);
  if (agreed[1] != -agreed[2])
    throw error(errc::invalid_option, std::string("the ranks disagree on ") + shared_what);
  if (agreed[0] == c.size()) return;
  const int first = static_cast<int>(agreed[0]);
  std::vector<std::byte> message;
  if (c.rank() == first) {
    const auto code = static_cast<std::int32_t>(failure->code());
    const std::string_view text = failure->what();
    message.resize(sizeof code + text.size());
    std::memcpy(message.data(), &code, sizeof code);
    std::memcpy(message.data() + sizeof code, text.data(), text.size());
  }
  c.broadcast(message, first);
  std::int32_t code = 0;
  std::memcpy(&code, message.data(), sizeof code);
  throw error(static_cast<errc>(code), "rank " + std::to_string(first) + ": " +
                                           std::string(reinterpret_cast<const char*>(message.data()) + sizeof code,
                                                       message.size() - sizeof code));
}

// Runs `phase`, this rank's work between two exchanges, and agrees on how it went before the next
// exchange: when it failed on any rank (memory running out as its buffers grow), every rank throws
// that rank's error there, where the others would otherwise wait in the exchange for a rank that
// has left the call. Costs one reduction of three numbers (microseconds against the exchange).
template <class Phase>
void before_exchange(communicator& c, const char* doing, Phase&& phase) {
  agree(c, fingerprint{}, "nothing", doing, phase);
}

void check_partition(const sharding& s, int ranks) {
  if (s.partition.ranks() != ranks)
    throw error(errc::invalid_shape, "sharding.partition has " + std::to_string(s.partition.ranks()) +
                                         " ranks; the communicator has " + std::to_string(ranks));
}

void check_shard_rows(const sharding& s, int rank, std::int64_t rows, const char* name) {
  if (rows != s.partition.count(rank))
    throw error(errc::invalid_shape, std::string(name) + " has " + std::to_string(rows) + " rows; rank " +
                                         std::to_string(rank) + " owns " + std::to_string(s.partition.count(rank)));
}

// A block of rows for one owner or from one requester: per bag, its number of rows; the rows
// (in the owner's numbering) and what each is multiplied by (forward: the per-sample weights;
// backward: each index's coefficient); the requester's bag numbers; backward's argmax rows for max.
struct row_block {
  std::vector<std::int64_t> lengths, rows, bag_of, argmax;
  std::vector<float> coefficients;
  void clear() noexcept {
    lengths.clear();
    rows.clear();
    bag_of.clear();
    argmax.clear();
    coefficients.clear();
  }
};

// What every rank sends an owner for backward: per bag of its batch that references the owner's
// rows, the bag's indices there (shard rows) with their coefficients, its dY row, and for max its
// argmax row (shard rows, -1 where another rank's row won). Bags of mode none are single indices.
// The owner concatenates the blocks in rank order: the bags of one call whose batch is every
// rank's batch concatenated, restricted to the owner's rows.
struct owned_bags {
  std::vector<std::int64_t> lengths, rows, argmax;
  std::vector<float> coefficients, grad_output;
  std::vector<std::int64_t> argmax_stand_in;  // what validation is shown for max (see owned_backward)
  std::vector<std::int64_t> rewritten;        // validation's, unused: the local call has no index policy
  options opts;
  std::int64_t dim = 0;

  bags batch() const { return bags::from_lengths(rows, lengths, coefficients); }
  matrix_view<const float> dy() const {
    return {grad_output.data(), static_cast<std::int64_t>(lengths.size()), dim, dim};
  }
  void clear() noexcept {
    for (std::vector<std::int64_t>* v : {&lengths, &rows, &argmax, &argmax_stand_in, &rewritten}) v->clear();
    coefficients.clear();
    grad_output.clear();
    opts = {};
    dim = 0;
  }
};

// The large buffers of the exchanges, kept by each thread from call to call: they only grow, so
// that a thread's calls stop allocating (and faulting in fresh pages, 10 MB of them per call in
// the benchmark) once they have seen the largest.
struct exchange_buffers {
  std::vector<std::byte> send, received, reply, rows;
  std::vector<float> sums;  // partial_sums: the other owners' partials, received as bytes
  std::vector<std::int64_t> slot_of, row_of_slot, request;
  std::vector<std::int32_t> owner_of;
  std::vector<row_block> to_owner;  // one per rank
  row_block from_requester;         // partial_sums
  owned_bags owned;                 // backward
  std::vector<float> partials, divisors;
};

exchange_buffers& buffers() {
  thread_local exchange_buffers kept;
  return kept;
}

template <class T>
std::span<const std::byte> bytes_of(const std::vector<T>& v) noexcept {
  return std::as_bytes(std::span<const T>(v));
}

// A received block's values, appended to `to` (copied: blocks are not aligned for T).
template <class T>
const std::byte* take(const std::byte* from, std::int64_t count, std::vector<T>& to) {
  if (count == 0) return from;  // memcpy may not be given a null pointer, even for no bytes
  const std::size_t old = to.size();
  to.resize(old + static_cast<std::size_t>(count));
  std::memcpy(to.data() + old, from, static_cast<std::size_t>(count) * sizeof(T));
  return from + count * static_cast<std::int64_t>(sizeof(T));
}

// count values appended to a block being built.
template <class T>
void put(std::vector<std::byte>& to, const T* values, std::int64_t count) {
  if (count == 0) return;
  const std::size_t old = to.size();
  to.resize(old + static_cast<std::size_t>(count) * sizeof(T));
  std::memcpy(to.data() + old, values, static_cast<std::size_t>(count) * sizeof(T));
}

// One block per rank but `skip` (-1: none), from kept.to_owner, in the thread's send buffer for
// one all-to-all: bag count, index count, whether coefficients follow (a rank without weights has
// none: its batch may be empty), lengths, rows, coefficients, then what append(rank, send) adds.
// Returns each rank's bytes.
template <class Append>
std::vector<std::int64_t> pack_blocks(exchange_buffers& kept, int skip, bool coefficients, const Append& append) {
  const auto ranks = static_cast<int>(kept.to_owner.size());
  kept.send.clear();
  std::vector<std::int64_t> bytes_to(static_cast<std::size_t>(ranks));
  for (int o = 0; o < ranks; ++o) {
    if (o == skip) continue;
    const std::size_t before = kept.send.size();
    const row_block& k = kept.to_owner[static_cast<std::size_t>(o)];
    const std::int64_t counts[3] = {static_cast<std::int64_t>(k.lengths.size()), static_cast<std::int64_t>(k.rows.size()),
                                    coefficients};
    put(kept.send, counts, 3);
    put(kept.send, k.lengths.data(), counts[0]);
    put(kept.send, k.rows.data(), counts[1]);
    put(kept.send, k.coefficients.data(), static_cast<std::int64_t>(k.coefficients.size()));
    append(o, kept.send);
    bytes_to[static_cast<std::size_t>(o)] = static_cast<std::int64_t>(kept.send.size() - before);
  }
  return bytes_to;
}

// Splits the bags' indices by owner, padding left out, into kept.to_owner: per owner its rows
// (numbered from the owner's first row), with `coefficients` each row's coefficient (its weight, or
// 1, divided by its bag's divisor when `divide`), and the bags with rows there with their numbers
// of rows, in bag order. Each bag's divisor goes to kept.divisors (1 without scaling). Lookups
// are bags of one index.
//
// Two passes over the indices: each one's owner (-1: padding), counting the rows each owner gets;
// then, bag by bag, every row written at its owner's cursor, each bag's length there written once
// the bag ends (where its rows there began, kept at its first one). Counting rows, bags and the last bag seen per
// owner in the first pass, and each bag's length in place in the second, made every index load
// and store counters chosen by its owner, a chain through memory that a random owner breaks
// often: timed inside the partial-sums forward (`sharded_benchmark --scaling weak --only
// partial_sums`, 81,920 indices, Zen 3), that bucketing took 1.03-1.11 ms on 2 ranks (0.54-0.58
// on 1), this 0.56-0.62 (0.47-0.50).
void split_by_owner(const detail::bag_source& source, bool lookup, std::int64_t padding, detail::bag_scaling scaling,
                    const row_partition& part, bool coefficients, bool divide, exchange_buffers& kept) {
  const int ranks = part.ranks();
  const bool weighted = source.weights != nullptr;
  const std::int64_t bags = lookup ? source.nnz : source.num_bags;
  std::vector<row_block>& to = kept.to_owner;
  to.resize(static_cast<std::size_t>(ranks));
  for (row_block& k : to) k.clear();
  kept.divisors.assign(static_cast<std::size_t>(bags), 1.0f);
  const std::span<const std::int64_t> boundaries = part.boundaries();
  std::vector<std::int32_t>& owner_of = kept.owner_of;
  owner_of.resize(static_cast<std::size_t>(source.nnz));
  std::vector<std::int64_t> rows_to(static_cast<std::size_t>(ranks), 0);
  detail::with_indices(source, [&](const auto* indices) {
    for (std::int64_t j = 0; j < source.nnz; ++j) {
      const std::int64_t row = indices[j];
      const int owner = row == padding ? -1 : owner_in(boundaries, row);
      owner_of[j] = owner;
      if (owner >= 0) ++rows_to[owner];
    }
  });
  struct cursor {  // where an owner's next row and bag go, and where the current bag's rows began there
    std::int64_t *rows, *bag_of, *lengths;
    float* coefficients;
    std::int64_t first_row;
    const std::int64_t* bag_first = nullptr;  // null until the current bag has a row there
  };
  std::vector<cursor> write_at(static_cast<std::size_t>(ranks));
  for (int o = 0; o < ranks; ++o) {
    row_block& k = to[static_cast<std::size_t>(o)];
    k.rows.resize(static_cast<std::size_t>(rows_to[o]));
    const auto most_bags = static_cast<std::size_t>(std::min(rows_to[o], bags));
    k.bag_of.resize(most_bags);
    k.lengths.resize(most_bags);
    if (coefficients) k.coefficients.resize(static_cast<std::size_t>(rows_to[o]));
    write_at[o] = {k.rows.data(), k.bag_of.data(), k.lengths.data(), k.coefficients.data(), part.first(o)};
  }
  // The owners of the current bag's rows, each once (an array, not push_back: a call in the loop
  // made the compiler keep the loop's variables in memory).
  std::vector<int> bag_owners(static_cast<std::size_t>(ranks));
  detail::with_indices(source, [&](const auto* indices) {
    std::int64_t begin = 0;
    for (std::int64_t b = 0; b < bags; ++b) {
      const std::int64_t end = lookup ? b + 1 : detail::end_of_bag(source, b, begin);
      float divisor = 1.0f;
      if (scaling != detail::bag_scaling::none) {  // as the local calls divide (plan.cpp's row transpose)
        detail::bag_tally tally;
        for (std::int64_t j = begin; j < end; ++j)
          if (owner_of[j] >= 0) detail::tally_row(tally, weighted ? source.weights[j] : 1.0f);
        divisor = kept.divisors[b] = detail::bag_divisor(scaling, weighted, tally);
      }
      int touched = 0;
      for (std::int64_t j = begin; j < end; ++j) {
        const int owner = owner_of[j];
        if (owner < 0) continue;
        cursor& c = write_at[owner];
        *c.rows++ = indices[j] - c.first_row;
        if (coefficients) {
          const float weight = weighted ? source.weights[j] : 1.0f;
          *c.coefficients++ = divide ? detail::divided(weight, divisor) : weight;
        }
        if (c.bag_first == nullptr) {
          c.bag_first = c.rows - 1;
          bag_owners[touched++] = owner;
        }
      }
      for (int t = 0; t < touched; ++t) {
        cursor& c = write_at[bag_owners[t]];
        *c.bag_of++ = b;
        *c.lengths++ = c.rows - c.bag_first;
        c.bag_first = nullptr;
      }
      begin = end;
    }
  });
  for (int o = 0; o < ranks; ++o) {  // the bags each owner got
    row_block& k = to[static_cast<std::size_t>(o)];
    const auto bags_there = static_cast<std::size_t>(write_at[o].bag_of - k.bag_of.data());
    k.bag_of.resize(bags_there);
    k.lengths.resize(bags_there);
  }
}

// forward_exchange::partial_sums on a validated pooled-sum call: per (bag, owner) the owner's
// weighted sum of its rows of the bag, added in rank order, then divided as the mode divides.
void forward_partial_sums(communicator& c, const row_partition& part, compressed_table_view shard,
                          const detail::forward_request& r, const options& opts) {
  const int me = c.rank(), ranks = c.size();
  const detail::bag_source& source = r.bags;
  const std::int64_t dim = r.dim, padding = r.padding_idx;
  const bool weighted = source.weights != nullptr;
  exchange_buffers& kept = buffers();
  const std::vector<row_block>& to = kept.to_owner;
  const std::vector<float>& divisors = kept.divisors;
  std::vector<std::int64_t> bytes_to, bytes_from;
  before_exchange(c, "bucketing the indices by owner", [&] {
    split_by_owner(source, false, padding, r.reduce.scaling, part, weighted, false, kept);
    // This rank's own block stays here (no MPI copy): the owner pools it after the others'.
    bytes_to = pack_blocks(kept, me, weighted, [](int, std::vector<std::byte>&) {});
  });
  c.all_to_all(kept.send, bytes_to, kept.received, bytes_from);
  const std::vector<std::byte>& received = kept.received;

  // The owner: every rank's bags, the others' in rank order then its own, pooled by one local
  // forward (mode sum; clip as asked). A rank that sent no weights gets weights of 1 where another
  // rank sent some: the kernel multiplies by them, the same arithmetic as no weights.
  options pooled;
  pooled.max_norm = opts.max_norm;
  pooled.norm_type = opts.norm_type;
  pooled.execution = opts.execution;
  row_block& from = kept.from_requester;
  std::vector<float>& partials = kept.partials;
  std::vector<float>& sums = kept.sums;
  std::int64_t own_first = 0;  // the first of this rank's own bags among those pooled (pooled last)
  std::vector<std::int64_t> sums_bytes;
  before_exchange(c, "pooling the rows asked for", [&] {
    sums_bytes.assign(static_cast<std::size_t>(ranks), 0);
    from.clear();
    bool any_weights = false;
    const std::byte* at = received.data();
    for (int source_rank = 0; source_rank < ranks; ++source_rank) {
      if (source_rank == me) continue;
      std::int64_t counts[3];
      std::memcpy(counts, at, sizeof counts);
      at += sizeof counts;
      at = take(at, counts[0], from.lengths);
      const std::size_t rows_before = from.rows.size();
      at = take(at, counts[1], from.rows);
      if (counts[2] != 0) {
        any_weights = true;
        from.coefficients.resize(rows_before, 1.0f);
        at = take(at, counts[1], from.coefficients);
      }
      bytes_from[source_rank] = counts[0] * dim * std::int64_t{sizeof(float)};  // the partial sums sent back
    }
    own_first = static_cast<std::int64_t>(from.lengths.size());
    const row_block& own = to[static_cast<std::size_t>(me)];
    from.lengths.insert(from.lengths.end(), own.lengths.begin(), own.lengths.end());
    const std::size_t rows_before = from.rows.size();
    from.rows.insert(from.rows.end(), own.rows.begin(), own.rows.end());
    if (weighted) {
      any_weights = true;
      from.coefficients.resize(rows_before, 1.0f);
      from.coefficients.insert(from.coefficients.end(), own.coefficients.begin(), own.coefficients.end());
    }
    if (any_weights) from.coefficients.resize(from.rows.size(), 1.0f);
    // Grown, never cleared: the forward writes every float of the partials it is given, so only
    // the growth is zero-filled (a fresh 1-2 MB per call was measurable at 1 rank).
    const auto pooled_bags = static_cast<std::int64_t>(from.lengths.size());
    const auto filled = static_cast<std::size_t>(pooled_bags * dim);
    if (partials.size() < filled) partials.resize(filled);
    embag::forward(shard, bags::from_lengths(from.rows, from.lengths, from.coefficients), pooled,
                   matrix_view<float>{partials.data(), pooled_bags, dim, dim});
    // Each other owner's partials of this rank's bags come back, block after block in rank order
    // (sizes this rank knows: a row per bag it sent there), into memory kept and grown only.
    const std::size_t row_bytes = static_cast<std::size_t>(dim) * sizeof(float);
    for (int o = 0; o < ranks; ++o)
      if (o != me) sums_bytes[o] = static_cast<std::int64_t>(to[static_cast<std::size_t>(o)].bag_of.size() * row_bytes);
    const auto sums_size = static_cast<std::size_t>(std::accumulate(sums_bytes.begin(), sums_bytes.end(), std::int64_t{0}));
    if (sums.size() * sizeof(float) < sums_size) sums.resize(sums_size / sizeof(float));
  });
  c.all_to_all_known(std::as_bytes(std::span<const float>(partials.data(), static_cast<std::size_t>(own_first * dim))),
                     bytes_from, sums_bytes, std::as_writable_bytes(std::span<float>(sums.data(), sums.size())));

  // The requester, bag by bag (each output row written once, while it is in L1): the first
  // owner's partial, plus each other owner's in rank order (zeros for a bag of no rows), then the
  // divisor. Owner o's partials are its bag_of's bags in order: this rank's own in partials, the
  // others' block after block in sums (received as bytes into floats, so read as floats).
  std::vector<const float*> next_partial(static_cast<std::size_t>(ranks));
  std::vector<std::size_t> next_bag(static_cast<std::size_t>(ranks), 0);
  const float* block = sums.data();
  for (int o = 0; o < ranks; ++o) {
    if (o == me) {
      next_partial[o] = partials.data() + own_first * dim;
      continue;
    }
    next_partial[o] = block;
    block += sums_bytes[o] / std::int64_t{sizeof(float)};
  }
  const bool divide = r.reduce.scaling != detail::bag_scaling::none;
  for (std::int64_t b = 0; b < source.num_bags; ++b) {
    float* const y = r.out + b * r.out_stride;
    bool first = true;
    for (int o = 0; o < ranks; ++o) {
      const std::vector<std::int64_t>& bags_there = to[static_cast<std::size_t>(o)].bag_of;
      if (next_bag[o] == bags_there.size() || bags_there[next_bag[o]] != b) continue;
      const float* const partial = next_partial[o];
      if (first) std::copy_n(partial, dim, y);
      else for (std::int64_t d = 0; d < dim; ++d) y[d] += partial[d];
      first = false;
      next_partial[o] += dim;
      ++next_bag[o];
    }
    if (first) std::fill_n(y, dim, 0.0f);
    if (divide)
      for (std::int64_t d = 0; d < dim; ++d) y[d] = detail::divided(y[d], divisors[b]);
  }
}

}  // namespace

void forward(const sharding& s, compressed_table_view shard, const bags& batch, const options& opts,
             matrix_view<float> out, std::span<std::int64_t> argmax, forward_exchange exchange) {
  communicator& c = communicator_of(s);
  const int me = c.rank(), ranks = c.size();
  const row_partition& part = s.partition;
  std::vector<std::int64_t> rewritten;
  std::optional<detail::forward_call> whole;  // this rank's call validated against the whole table
  std::int64_t row_bytes = 0;
  const bool partial_sums = exchange == forward_exchange::partial_sums && opts.mode != mode::max && opts.mode != mode::none;
  fingerprint shared = of_partition(part);
  shared.add(shard.dim).add(static_cast<std::int64_t>(shard.element_type)).add(partial_sums);
  agree(c, shared, "the partition, dim and dtype of the table and the exchange", "validating the call", [&] {
    if (exchange > forward_exchange::partial_sums)
      throw error(errc::invalid_option, "exchange = " + std::to_string(static_cast<int>(exchange)) + " is not a forward_exchange");
    check_partition(s, ranks);
    check_shard_rows(s, me, shard.rows, "shard");
    const detail::stored_table local = detail::stored(shard);
    row_bytes = local.row_bytes;
    if (opts.max_norm && opts.max_norm_mode == max_norm_flavour::in_place)
      throw error(errc::invalid_option, "max_norm in place on a sharded table (it would write other ranks' rows): clip instead");
    // the whole table as validation sees it: no bytes of it are read, so none can overlap an output
    const detail::stored_table stand_in{nullptr, local.type, part.rows(), local.dim, local.row_bytes, local.row_bytes};
    whole.emplace(detail::validate_forward(stand_in, batch, opts, out, argmax, rewritten));
  });
  if (partial_sums) {
    forward_partial_sums(c, part, shard, whole->req, opts);
    whole->census.publish();
    return;
  }
  const detail::bag_source& source = whole->req.bags;
  const std::int64_t padding = whole->req.padding_idx, nnz = source.nnz;

  // Each non-padding position gets a slot in the rows fetched, owner by owner, in position order:
  // the other ranks' rows first, in rank order (as the all-to-all delivers them), then this rank's
  // own, copied from the shard straight into their slots (no request, reply or MPI copy).
  exchange_buffers& kept = buffers();
  std::vector<std::int32_t>& owner_of = kept.owner_of;
  std::vector<std::int64_t>&slot_of = kept.slot_of, &row_of_slot = kept.row_of_slot, &request = kept.request;
  const auto place_of = [&](int owner) { return owner < me ? owner : owner > me ? owner - 1 : ranks - 1; };
  std::int64_t fetched = 0, remote = 0;  // this rank's slots: [remote, fetched)
  std::vector<std::int64_t> bytes_to, rows_bytes;
  before_exchange(c, "bucketing the indices by owner", [&] {
    owner_of.resize(static_cast<std::size_t>(nnz));
    std::vector<std::int64_t> rows_from(static_cast<std::size_t>(ranks) + 1, 0);  // by place
    for (std::int64_t j = 0; j < nnz; ++j) {
      const std::int64_t row = element_at(source.indices, source.index_kind, j);
      owner_of[j] = row == padding ? -1 : part.owner(row);
      if (row != padding) ++rows_from[static_cast<std::size_t>(place_of(owner_of[j])) + 1];
    }
    for (int o = 0; o < ranks; ++o) rows_from[o + 1] += rows_from[o];
    fetched = rows_from[ranks];
    remote = rows_from[ranks - 1];
    std::vector<std::int64_t> next(rows_from.begin(), rows_from.end() - 1);
    slot_of.resize(static_cast<std::size_t>(nnz));
    row_of_slot.resize(static_cast<std::size_t>(fetched));
    for (std::int64_t j = 0; j < nnz; ++j) {
      if (owner_of[j] < 0) {
        slot_of[j] = fetched;  // the zero row after the fetched ones, the local call's padding
        continue;
      }
      const std::int64_t slot = next[place_of(owner_of[j])]++;
      slot_of[j] = slot;
      row_of_slot[slot] = element_at(source.indices, source.index_kind, j);
    }
    // Requests to the other ranks: shard rows (numbered from the owner's first); their rows come
    // back into the slots, whose sizes this rank knows.
    request.resize(static_cast<std::size_t>(remote));
    bytes_to.assign(static_cast<std::size_t>(ranks), 0);
    rows_bytes.assign(static_cast<std::size_t>(ranks), 0);
    for (int o = 0; o < ranks; ++o) {
      if (o == me) continue;
      const std::int64_t first = rows_from[place_of(o)], end = rows_from[place_of(o) + 1];
      for (std::int64_t k = first; k < end; ++k) request[k] = row_of_slot[k] - part.first(o);
      bytes_to[o] = (end - first) * std::int64_t{sizeof(std::int64_t)};
      rows_bytes[o] = (end - first) * row_bytes;
    }
  });
  std::vector<std::byte>& asked = kept.received;
  std::vector<std::int64_t> bytes_from;
  c.all_to_all(bytes_of(request), bytes_to, asked, bytes_from);
  const std::size_t asked_rows = asked.size() / sizeof(std::int64_t);
  const std::int64_t stride = shard.row_stride == 0 ? row_bytes : shard.row_stride;
  const auto copy_row = [&](std::byte* to, std::int64_t shard_row) {
    std::memcpy(to, shard.data + shard_row * stride, static_cast<std::size_t>(row_bytes));
  };
  const std::size_t reply_bytes = asked_rows * static_cast<std::size_t>(row_bytes);
  std::vector<std::byte>& rows = kept.rows;
  before_exchange(c, "gathering the rows asked for", [&] {
    if (kept.reply.size() < reply_bytes) kept.reply.resize(reply_bytes);
    for (std::size_t i = 0; i < asked_rows; ++i) {
      std::int64_t row = 0;  // the blocks are bytes: not aligned for int64
      std::memcpy(&row, asked.data() + i * sizeof row, sizeof row);
      copy_row(kept.reply.data() + i * static_cast<std::size_t>(row_bytes), row);
    }
    for (std::int64_t& b : bytes_from) b = b / std::int64_t{sizeof(std::int64_t)} * row_bytes;
    // Grown, never shrunk: every byte of [0, (fetched + 1) x row_bytes) is written below, so only
    // the growth is zero-filled.
    const auto rows_size = static_cast<std::size_t>((fetched + 1) * row_bytes);
    if (rows.size() < rows_size) rows.resize(rows_size);
  });
  c.all_to_all_known(std::span<const std::byte>(kept.reply.data(), reply_bytes), bytes_from, rows_bytes,
                     std::span<std::byte>(rows.data(), static_cast<std::size_t>(remote * row_bytes)));
  for (std::int64_t k = remote; k < fetched; ++k) copy_row(rows.data() + k * row_bytes, row_of_slot[k] - part.first(me));
  std::fill_n(rows.data() + fetched * row_bytes, row_bytes, std::byte{0});  // the zero row

  // The local forward on the fetched rows: the same kernel adds the same rows in the same order.
  options local = opts;
  local.padding_idx = fetched;
  local.bad_indices = bad_index_policy::error;
  local.pruned_ids = false;
  local.remap = {};
  local.report = nullptr;
  bags local_batch = batch;
  local_batch.indices = index_span(slot_of);
  const compressed_table_view fetched_rows{rows.data(), fetched + 1, shard.dim, row_bytes, shard.element_type};
  embag::forward(fetched_rows, local_batch, local, out, argmax);
  for (std::int64_t& a : argmax)
    if (a >= 0) a = row_of_slot[a];
  whole->census.publish();
}

namespace {

// Validates this rank's backward against the whole table (and `check_local`, this rank's own
// outputs), agrees, and exchanges: returns the bags every rank sent this one (the thread's kept
// buffers: valid until its next sharded call).
template <class CheckLocal>
owned_bags& exchange_backward(const sharding& s, const bags& batch, const options& opts,
                             matrix_view<const float> grad_output, std::span<const std::int64_t> argmax,
                             CheckLocal&& check_local) {
  communicator& c = communicator_of(s);
  const int me = c.rank(), ranks = c.size();
  const row_partition& part = s.partition;
  std::vector<std::int64_t> rewritten;
  std::optional<detail::backward_call> whole;
  fingerprint shared = of_partition(part);
  shared.add(grad_output.cols).add(static_cast<std::int64_t>(opts.mode)).add(opts.scale_grad_by_freq);
  agree(c, shared, "the partition, dim, mode and scale_grad_by_freq", "validating the call", [&] {
    check_partition(s, ranks);
    whole.emplace(detail::validate_backward_sparse(part.rows(), batch, opts, grad_output, argmax, rewritten));
    check_local(me, whole->req.dim);
  });
  const detail::backward_request& r = whole->req;
  const detail::bag_source& source = r.bags;
  const std::int64_t dim = r.dim, padding = r.padding_idx;
  const bool lookup = r.reduce.pool == detail::pooling::lookup, max = r.reduce.pool == detail::pooling::max;
  const bool weighted = source.weights != nullptr;
  const bool coefficients = !max && (weighted || r.reduce.scaling != detail::bag_scaling::none);

  exchange_buffers& kept = buffers();
  const std::vector<row_block>& to = kept.to_owner;
  std::vector<std::int64_t> bytes_to, bytes_from;
  before_exchange(c, "bucketing the indices by owner", [&] {
    split_by_owner(source, lookup, padding, r.reduce.scaling, part, coefficients,
                   r.reduce.scaling != detail::bag_scaling::none, kept);
    if (max)  // per bag and owner, its argmax rows there (shard rows; -1 where another owner's row won)
      for (int o = 0; o < ranks; ++o) {
        row_block& k = kept.to_owner[static_cast<std::size_t>(o)];
        k.argmax.resize(k.bag_of.size() * static_cast<std::size_t>(dim));
        std::int64_t* winners = k.argmax.data();
        for (std::int64_t b : k.bag_of)
          for (std::int64_t d = 0; d < dim; ++d) {
            const std::int64_t winner = r.argmax[b * dim + d];
            *winners++ = winner >= 0 && part.owner(winner) == o ? winner - part.first(o) : -1;
          }
      }
    // Each block: its rows (pack_blocks), then the bags' dY rows and argmax rows.
    bytes_to = pack_blocks(kept, -1, coefficients, [&](int o, std::vector<std::byte>& send) {
      const row_block& k = to[static_cast<std::size_t>(o)];
      for (std::int64_t bag : k.bag_of) put(send, r.grad_output + bag * r.grad_output_stride, dim);
      put(send, k.argmax.data(), static_cast<std::int64_t>(k.argmax.size()));
    });
  });
  c.all_to_all(kept.send, bytes_to, kept.received, bytes_from);
  std::vector<std::byte>& received = kept.received;

  owned_bags& owned = kept.owned;
  owned.clear();
  owned.dim = dim;
  const std::byte* at = received.data();
  bool any_coefficients = false;
  for (int source_rank = 0; source_rank < ranks; ++source_rank) {
    std::vector<std::int64_t> counts;
    at = take(at, 3, counts);
    at = take(at, counts[0], owned.lengths);
    at = take(at, counts[1], owned.rows);
    // a coefficient of 1 is what the kernel multiplies by without weights: the same arithmetic
    if (counts[2] != 0) at = take(at, counts[1], owned.coefficients);
    else owned.coefficients.resize(owned.coefficients.size() + static_cast<std::size_t>(counts[1]), 1.0f);
    any_coefficients = any_coefficients || counts[2] != 0;
    at = take(at, counts[0] * dim, owned.grad_output);
    if (max) at = take(at, counts[0] * dim, owned.argmax);
  }
  if (!any_coefficients) owned.coefficients.clear();
  // The local call: pooled modes are weighted sums whose weights are the coefficients (1 when
  // none are sent), max keeps its argmax; the owner's rows are all there is, no index policy.
  owned.opts.mode = max ? mode::max : mode::sum;
  owned.opts.scale_grad_by_freq = opts.scale_grad_by_freq;
  owned.opts.execution = opts.execution;
  if (max) {
    owned.argmax_stand_in = owned.argmax;
    std::int64_t first = 0;
    for (std::size_t b = 0; b < owned.lengths.size(); ++b) {
      for (std::int64_t d = 0; d < dim; ++d) {
        std::int64_t& winner = owned.argmax_stand_in[b * static_cast<std::size_t>(dim) + d];
        if (winner < 0) winner = owned.rows[first];
      }
      first += owned.lengths[b];
    }
  }
  whole->census.publish();
  return owned;
}

// The owner's local backward call, validated as the library validates it, then run. For max,
// validation requires every dimension's winner to be an index of its bag; here a dimension another
// rank's row won has none: validation is shown a stand-in (the bag's first row) and the kernel
// then reads the true argmax, where -1 matches no row and adds nothing.
template <class Call, class Validate>
auto owned_backward(owned_bags& owned, Validate&& validate) {
  const bool max = owned.opts.mode == mode::max;
  Call call = validate(owned.batch(), std::span<const std::int64_t>(max ? owned.argmax_stand_in : owned.argmax),
                       owned.rewritten);
  if constexpr (std::is_same_v<Call, detail::update_call>) {
    if (max) call.req.gradient.argmax = owned.argmax.data();
  } else {
    if (max) call.req.argmax = owned.argmax.data();
  }
  return call;
}

}  // namespace

void backward_dense(const sharding& s, const bags& batch, const options& opts, matrix_view<const float> grad_output,
                    matrix_view<float> grad_shard, std::span<const std::int64_t> argmax) {
  owned_bags& owned = exchange_backward(s, batch, opts, grad_output, argmax, [&](int rank, std::int64_t dim) {
    check_shard_rows(s, rank, grad_shard.rows, "grad_shard");
    detail::validate_output("grad_shard", grad_shard, grad_shard.rows, dim);
  });
  auto call = owned_backward<detail::backward_call>(owned, [&](const bags& b, std::span<const std::int64_t> a, auto& rw) {
    return detail::validate_backward_dense(b, owned.opts, owned.dy(), grad_shard, a, rw);
  });
  detail::execute(call, nullptr);
}

void backward_sparse(const sharding& s, const bags& batch, const options& opts, matrix_view<const float> grad_output,
                     sparse_gradient& grad, std::span<const std::int64_t> argmax) {
  owned_bags& owned = exchange_backward(s, batch, opts, grad_output, argmax, [](int, std::int64_t) {});
  const std::int64_t rows = s.partition.count(s.comm->rank());
  auto call = owned_backward<detail::backward_call>(owned, [&](const bags& b, std::span<const std::int64_t> a, auto& rw) {
    return detail::validate_backward_sparse(rows, b, owned.opts, owned.dy(), a, rw);
  });
  detail::execute(call, grad, nullptr);
}

update_summary backward_update(const sharding& s, trainable_table_view shard, const bags& batch, const options& opts,
                               matrix_view<const float> grad_output, const optimizer& opt, optimizer_state state,
                               std::span<const std::int64_t> argmax) {
  owned_bags& owned = exchange_backward(s, batch, opts, grad_output, argmax, [&](int rank, std::int64_t dim) {
    check_shard_rows(s, rank, shard.rows, "shard");
    if (shard.dim != dim)
      throw error(errc::size_mismatch, "shard has dim " + std::to_string(shard.dim) + "; grad_output has " +
                                           std::to_string(dim) + " columns");
    // the table, the optimizer and the state, as the update checks them (on no rows yet)
    detail::validate_apply_sparse_gradient(shard, {}, {}, dim, opt, state, opts.execution);
  });
  auto call = owned_backward<detail::update_call>(owned, [&](const bags& b, std::span<const std::int64_t> a, auto& rw) {
    return detail::validate_backward_update(shard, b, owned.opts, owned.dy(), opt, state, a, rw);
  });
  call.req.hashed_row_offset = s.partition.first(s.comm->rank());  // stochastic rounding as the whole table's
  return detail::execute(call, nullptr);
}

}  // namespace embag::sharded
