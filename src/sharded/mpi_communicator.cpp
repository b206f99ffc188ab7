// The sharded calls' communicator over MPI (embag/mpi.hpp).
#include "embag/mpi.hpp"

#include <algorithm>
#include <climits>
#include <string>

namespace embag::sharded {
namespace {

// MPI's default error handler aborts the job on a failed call: a rank that threw instead would
// leave the others waiting in the next collective.
class mpi_engine final : public communicator {
 public:
  explicit mpi_engine(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }

  void all_to_all(std::span<const std::byte> send, std::span<const std::int64_t> bytes_to, std::vector<std::byte>& received,
                  std::vector<std::int64_t>& bytes_from) override {
    const auto ranks = static_cast<std::size_t>(size_);
    bytes_from.assign(ranks, 0);
    MPI_Alltoall(bytes_to.data(), 1, MPI_INT64_T, bytes_from.data(), 1, MPI_INT64_T, comm_);
    std::vector<int> send_counts(ranks), send_at(ranks), receive_counts(ranks), receive_at(ranks);
    std::int64_t sent = 0, got = 0;
    for (std::size_t r = 0; r < ranks; ++r) {
      send_at[r] = static_cast<int>(sent);
      receive_at[r] = static_cast<int>(got);
      sent += bytes_to[r];
      got += bytes_from[r];
      send_counts[r] = static_cast<int>(bytes_to[r]);
      receive_counts[r] = static_cast<int>(bytes_from[r]);
    }
    // the int counts and displacements must hold every rank's totals: agreed, so all ranks throw
    std::int64_t largest = std::max(sent, got);
    MPI_Allreduce(MPI_IN_PLACE, &largest, 1, MPI_INT64_T, MPI_MAX, comm_);
    if (largest > INT_MAX)
      throw error(errc::size_overflow, "an all-to-all of " + std::to_string(largest) +
                                           " bytes on one rank: MPI counts stop at 2^31 - 1");
    received.resize(static_cast<std::size_t>(got));
    MPI_Alltoallv(send.data(), send_counts.data(), send_at.data(), MPI_BYTE, received.data(), receive_counts.data(),
                  receive_at.data(), MPI_BYTE, comm_);
  }

  void all_min(std::span<std::int64_t> values) override {
    MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_INT64_T, MPI_MIN, comm_);
  }

  void broadcast(std::vector<std::byte>& bytes, int root) override {
    auto size = static_cast<std::int64_t>(bytes.size());
    MPI_Bcast(&size, 1, MPI_INT64_T, root, comm_);
    bytes.resize(static_cast<std::size_t>(size));
    MPI_Bcast(bytes.data(), static_cast<int>(size), MPI_BYTE, root, comm_);
  }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<communicator> mpi_communicator(MPI_Comm comm) { return std::make_unique<mpi_engine>(comm); }

}  // namespace embag::sharded
