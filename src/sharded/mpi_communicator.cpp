// The sharded calls' communicator over MPI (embag/mpi.hpp).
#include "embag/mpi.hpp"

#include <algorithm>
#include <climits>
#include <limits>
#include <new>
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
    counts_from_.resize(static_cast<std::size_t>(size_));
  }
  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }

  void all_to_all(std::span<const std::byte> send, std::span<const std::int64_t> bytes_to, std::vector<std::byte>& received,
                  std::vector<std::int64_t>& bytes_from) override {
    MPI_Alltoall(bytes_to.data(), 1, MPI_INT64_T, counts_from_.data(), 1, MPI_INT64_T, comm_);
    const blocks b = blocks_of(bytes_to, counts_from_, std::numeric_limits<std::int64_t>::max(), [&](std::int64_t bytes) {
      bytes_from.assign(counts_from_.begin(), counts_from_.end());
      received.resize(static_cast<std::size_t>(bytes));
    });
    MPI_Alltoallv(send.data(), b.send_counts.data(), b.send_at.data(), MPI_BYTE, received.data(), b.receive_counts.data(),
                  b.receive_at.data(), MPI_BYTE, comm_);
  }

  void all_to_all_known(std::span<const std::byte> send, std::span<const std::int64_t> bytes_to,
                        std::span<const std::int64_t> bytes_from, std::span<std::byte> into) override {
    const blocks b = blocks_of(bytes_to, bytes_from, static_cast<std::int64_t>(into.size()), [](std::int64_t) {});
    MPI_Alltoallv(send.data(), b.send_counts.data(), b.send_at.data(), MPI_BYTE, into.data(), b.receive_counts.data(),
                  b.receive_at.data(), MPI_BYTE, comm_);
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
  // An all-to-all's int counts and displacements, from its byte counts, and room made for what it
  // receives (make_room(bytes)). They must hold every rank's totals, each rank's blocks must fit
  // the room it has for them (all_to_all_known), and every rank must have had the memory: agreed,
  // so all ranks throw, where a rank that threw alone would leave the others in the exchange.
  struct blocks {
    std::vector<int> send_counts, send_at, receive_counts, receive_at;
    std::int64_t received = 0;
  };
  template <class MakeRoom>
  blocks blocks_of(std::span<const std::int64_t> bytes_to, std::span<const std::int64_t> bytes_from, std::int64_t room,
                   MakeRoom&& make_room) const {
    const auto ranks = static_cast<std::size_t>(size_);
    blocks b;
    std::int64_t sent = 0;
    bool out_of_memory = false;
    try {
      b = {std::vector<int>(ranks), std::vector<int>(ranks), std::vector<int>(ranks), std::vector<int>(ranks), 0};
      for (std::size_t r = 0; r < ranks; ++r) {
        b.send_at[r] = static_cast<int>(sent);
        b.receive_at[r] = static_cast<int>(b.received);
        sent += bytes_to[r];
        b.received += bytes_from[r];
        b.send_counts[r] = static_cast<int>(bytes_to[r]);
        b.receive_counts[r] = static_cast<int>(bytes_from[r]);
      }
      if (b.received <= room && b.received <= INT_MAX) make_room(b.received);  // else refused below, nothing grown
    } catch (const std::bad_alloc&) {
      out_of_memory = true;
    }
    // size, a rank short of room, a rank out of memory
    std::int64_t agreed[3] = {std::max(sent, b.received), b.received > room ? rank_ + 1 : 0, out_of_memory ? rank_ + 1 : 0};
    MPI_Allreduce(MPI_IN_PLACE, agreed, 3, MPI_INT64_T, MPI_MAX, comm_);
    if (agreed[2] > 0)
      throw error(errc::out_of_memory, "all_to_all: rank " + std::to_string(agreed[2] - 1) +
                                           " ran out of memory for the blocks it receives");
    if (agreed[1] > 0)
      throw error(errc::size_mismatch, "all_to_all_known: rank " + std::to_string(agreed[1] - 1) +
                                           " was sent more bytes than its buffer holds");
    const std::int64_t largest = agreed[0];
    if (largest > INT_MAX)
      throw error(errc::size_overflow, "an all-to-all of " + std::to_string(largest) +
                                           " bytes on one rank: MPI counts stop at 2^31 - 1");
    return b;
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  std::vector<std::int64_t> counts_from_;  // all_to_all's counts, received before anything can fail
};

}  // namespace

std::unique_ptr<communicator> mpi_communicator(MPI_Comm comm) { return std::make_unique<mpi_engine>(comm); }

}  // namespace embag::sharded
