// Scaling of the sharded forward and backward (embag/sharded.hpp) over MPI ranks, with the
// communication they cost. Run it under mpirun on 1, 2, 4, ... ranks:
//
//   mpirun -np N build/bench/sharded_benchmark [--scaling weak|strong] [--rows R] [--dim D]
//          [--length L] [--bags B] [--iterations K] [--bandwidth GBPS] [--only TEXT]
//
// weak:   every rank holds R rows and brings B bags (the table and the batch grow with N);
// strong: the table has R rows and the ranks share B bags (B / N each).
// Indices are uniform over the whole table, bags of L. Per operation it prints the step time (the
// slowest rank's, median of K), lookups per second over all ranks, the time spent inside the
// all-to-alls, the bytes each lookup sends to other ranks, and a model of the exchange on a
// cluster: those bytes over a link of GBPS GB/s per rank. --only runs the operations whose name
// contains TEXT (to profile one, e.g. --only partial_sums). Next to them, the ideal loop
// (embag::gather_roofline, the minimal gather) run by every rank at once on its own shard with a
// batch of the same size, which shows how this machine's memory system itself scales with N.
//
// Weak scaling on N > 1 ranks also times each operation on one rank, in the same processes,
// step for step with the N-rank steps: rank 0 alone, a sharding of its own shard over
// MPI_COMM_SELF, a batch as large over its own rows, while the other ranks wait. The efficiency
// printed is that one-rank step over the N-rank step (N ranks' lookups per second over N times
// one rank's): measured in one run, because this machine's speed drifts from one run to the
// next by more than the difference being measured.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "embag/mpi.hpp"
#include "embag/roofline.hpp"
#include "embag/sharded.hpp"

namespace {

using namespace embag;
using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) { return std::chrono::duration<double>(clock_type::now() - t0).count(); }

// The MPI communicator, counting what crosses to other ranks and the time spent in all-to-alls.
class counting_communicator final : public sharded::communicator {
 public:
  explicit counting_communicator(std::unique_ptr<sharded::communicator> inner) : inner_(std::move(inner)) {}
  int rank() const noexcept override { return inner_->rank(); }
  int size() const noexcept override { return inner_->size(); }
  void all_to_all(std::span<const std::byte> send, std::span<const std::int64_t> bytes_to, std::vector<std::byte>& received,
                  std::vector<std::int64_t>& bytes_from) override {
    const auto t0 = clock_type::now();
    inner_->all_to_all(send, bytes_to, received, bytes_from);
    seconds += seconds_since(t0);
    for (int r = 0; r < size(); ++r)
      if (r != rank()) bytes_out += bytes_to[static_cast<std::size_t>(r)];
  }
  void all_to_all_known(std::span<const std::byte> send, std::span<const std::int64_t> bytes_to,
                        std::span<const std::int64_t> bytes_from, std::span<std::byte> into) override {
    const auto t0 = clock_type::now();
    inner_->all_to_all_known(send, bytes_to, bytes_from, into);
    seconds += seconds_since(t0);
    for (int r = 0; r < size(); ++r)
      if (r != rank()) bytes_out += bytes_to[static_cast<std::size_t>(r)];
  }
  void all_min(std::span<std::int64_t> values) override { inner_->all_min(values); }
  void broadcast(std::vector<std::byte>& bytes, int root) override { inner_->broadcast(bytes, root); }

  double seconds = 0;
  std::int64_t bytes_out = 0;

 private:
  std::unique_ptr<sharded::communicator> inner_;
};

struct settings {
  std::string scaling = "weak";
  std::int64_t rows = 262144, dim = 128, length = 40, bags = 2048;
  int iterations = 20;
  double bandwidth = 12.5;  // GB/s per rank: 100 Gb/s Ethernet or InfiniBand EDR
  std::string only;         // empty: every operation
};

settings parse(int argc, char** argv) {
  settings s;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--scaling" && (value == "weak" || value == "strong")) s.scaling = value;
    else if (flag == "--rows") s.rows = std::atoll(value.c_str());
    else if (flag == "--dim") s.dim = std::atoll(value.c_str());
    else if (flag == "--length") s.length = std::atoll(value.c_str());
    else if (flag == "--bags") s.bags = std::atoll(value.c_str());
    else if (flag == "--iterations") s.iterations = std::atoi(value.c_str());
    else if (flag == "--bandwidth") s.bandwidth = std::atof(value.c_str());
    else if (flag == "--only") s.only = value;
    else {
      std::fprintf(stderr, "sharded_benchmark: unknown flag or value: %s %s\n", flag.c_str(), value.c_str());
      std::exit(2);
    }
  }
  if (argc % 2 == 0) {
    std::fprintf(stderr, "sharded_benchmark: %s wants a value\n", argv[argc - 1]);
    std::exit(2);
  }
  return s;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The slowest rank's value.
double slowest(double v) {
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return v;
}

template <class T>
T total(T v) {
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, std::is_same_v<T, double> ? MPI_DOUBLE : MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const settings s = parse(argc, argv);
  counting_communicator comm(sharded::mpi_communicator(MPI_COMM_WORLD));
  const int ranks = comm.size(), me = comm.rank();
  const bool weak = s.scaling == "weak";
  const std::int64_t table_rows = weak ? s.rows * ranks : s.rows;
  const std::int64_t my_bags = weak ? s.bags : s.bags / ranks;
  const sharded::sharding sharding{&comm, sharded::row_partition::even(table_rows, ranks)};
  const std::int64_t owned = sharding.partition.count(me);
  const bool alone_too = weak && ranks > 1;  // also time each operation on rank 0 alone
  counting_communicator self(sharded::mpi_communicator(MPI_COMM_SELF));
  const sharded::sharding alone{&self, sharded::row_partition::even(owned, 1)};

  // This rank's rows (their values do not matter to the timing) and batch.
  table shard(owned, s.dim);
  std::mt19937_64 rng(static_cast<std::uint64_t>(me) + 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::int64_t r = 0; r < owned; ++r)
    for (std::int64_t d = 0; d < s.dim; ++d) shard.row(r)[d] = normal(rng);
  const std::int64_t lookups = my_bags * s.length;
  std::vector<std::int64_t> indices(static_cast<std::size_t>(lookups)), local_indices(indices.size()), offsets;
  std::uniform_int_distribution<std::int64_t> any_row(0, table_rows - 1), own_row(0, std::max<std::int64_t>(owned - 1, 0));
  for (std::int64_t j = 0; j < lookups; ++j) {
    indices[j] = any_row(rng);
    local_indices[j] = own_row(rng);
  }
  for (std::int64_t b = 0; b < my_bags; ++b) offsets.push_back(b * s.length);
  const bags batch = bags::from_offsets(indices, offsets);
  std::vector<float> out(static_cast<std::size_t>(my_bags * s.dim)), dy(out.size(), 1.0f);
  const matrix_view<float> out_view{out.data(), my_bags, s.dim, 0};
  options opts;
  opts.execution.max_threads = 1;  // one rank per core

  // The least a forward can exchange: each index that leaves its rank, and one partial row back
  // per (bag, other owner) it touches.
  std::int64_t minimum = 0;
  for (std::int64_t b = 0; b < my_bags; ++b) {
    std::vector<char> touched(static_cast<std::size_t>(ranks), 0);
    for (std::int64_t j = b * s.length; j < (b + 1) * s.length; ++j) {
      const int o = sharding.partition.owner(indices[j]);
      if (o == me) continue;
      minimum += sizeof(std::int64_t);
      if (!touched[o]) minimum += s.dim * std::int64_t{sizeof(float)};
      touched[o] = 1;
    }
  }
  const std::int64_t all_lookups = total(lookups);
  const double minimum_per_lookup = static_cast<double>(total(minimum)) / static_cast<double>(all_lookups);

  if (me == 0) {
    std::printf("sharded_benchmark: %s scaling, %d rank(s), table %lld x %lld f32 (%.0f MiB per rank), %lld bags of %lld per rank, "
                "1 thread per rank, %d iterations (median; the slowest rank per step)\n",
                s.scaling.c_str(), ranks, static_cast<long long>(table_rows), static_cast<long long>(s.dim),
                static_cast<double>(owned * s.dim * 4) / (1 << 20), static_cast<long long>(my_bags),
                static_cast<long long>(s.length), s.iterations);
    std::printf("%-26s %11s %14s %11s %13s %14s %18s%s\n", "operation", "step ms", "Mlookups/s", "comm ms", "bytes/lookup",
                "x minimum", "cluster comm ms", alone_too ? "  1-rank ms  efficiency" : "");
  }

  // Times op(sharding, batch) (a collective) K times after one warm-up, and with alone_too, step
  // for step, op(alone, local_batch) on rank 0 only; prints its line.
  const bags local_batch = bags::from_offsets(local_indices, offsets);
  const auto measure = [&](const std::string& name, auto&& op) {
    if (name.find(s.only) == std::string::npos) return;
    op(sharding, batch);
    if (alone_too && me == 0) op(alone, local_batch);
    std::vector<double> steps, alone_steps;
    comm.seconds = 0;
    comm.bytes_out = 0;
    for (int k = 0; k < s.iterations; ++k) {
      MPI_Barrier(MPI_COMM_WORLD);
      const auto t0 = clock_type::now();
      op(sharding, batch);
      steps.push_back(slowest(seconds_since(t0)));
      if (!alone_too) continue;
      MPI_Barrier(MPI_COMM_WORLD);
      if (me == 0) {
        const auto t1 = clock_type::now();
        op(alone, local_batch);
        alone_steps.push_back(seconds_since(t1));
      }
    }
    const double step = median(steps);
    const double comm_ms = total(comm.seconds) / ranks / s.iterations * 1e3;
    const double per_lookup = static_cast<double>(total(comm.bytes_out)) / s.iterations / static_cast<double>(all_lookups);
    // the exchange on a cluster: this rank's bytes out (and as many in) over its own link
    const double cluster_ms = per_lookup * static_cast<double>(lookups) / (s.bandwidth * 1e9) * 1e3;
    if (me == 0) {
      std::printf("%-26s %11.3f %14.2f %11.3f %13.1f %14.2f %18.3f", name.c_str(), step * 1e3,
                  static_cast<double>(all_lookups) / step / 1e6, comm_ms, per_lookup,
                  ranks == 1 ? 0.0 : per_lookup / minimum_per_lookup, cluster_ms);
      if (alone_too) std::printf(" %11.3f %11.2f", median(alone_steps) * 1e3, median(alone_steps) / step);
      std::printf("\n");
    }
  };

  const table_view<const float> rows = std::as_const(shard).view();
  measure("forward rows (bitwise)", [&](const sharded::sharding& on, const bags& b) { sharded::forward(on, rows, b, opts, out_view); });
  measure("forward partial_sums", [&](const sharded::sharding& on, const bags& b) {
    sharded::forward(on, rows, b, opts, out_view, {}, sharded::forward_exchange::partial_sums);
  });
  sparse_gradient grad;
  const matrix_view<const float> dy_view{dy.data(), my_bags, s.dim, 0};
  measure("backward_sparse", [&](const sharded::sharding& on, const bags& b) { sharded::backward_sparse(on, b, opts, dy_view, grad); });
  optimizer sgd;
  measure("backward_update sgd",
          [&](const sharded::sharding& on, const bags& b) { sharded::backward_update(on, shard.view(), b, opts, dy_view, sgd); });

  // The ideal loop and the local forward, every rank at once on its own shard, a batch as large
  // (alone: rank 0 only, the same call).
  const gather_roofline ideal(rows, local_batch, out_view, opts.execution);
  measure("ideal loop, local (1/N)", [&](const sharded::sharding&, const bags&) { ideal.run(); });
  measure("embag::forward, local", [&](const sharded::sharding&, const bags&) { forward(rows, local_batch, opts, out_view); });
  if (me == 0)
    std::printf("minimum bytes/lookup (indices out, one partial row back per bag and other owner): %.1f; "
                "cluster comm: this rank's bytes over %.1f GB/s\n",
                minimum_per_lookup, s.bandwidth);
  MPI_Finalize();
  return 0;
}
