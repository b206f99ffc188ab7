// embag and PyTorch's at::embedding_bag on the same workload, in the same process, calls
// interleaved, so the ratio is trustworthy on a noisy machine. Built only with -Dtorch_bench=enabled
// and Debian's libtorch-dev; never part of the test suite.
//   build/bench/torch_side_by_side [rows] [dim]        (defaults 1000000 128)
// PyTorch runs on as many threads as embag (at::set_num_threads): its default here is 1.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/api/include/torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>
#include <utility>
#include <vector>

#include "workload.hpp"

namespace {

using namespace embag;
using namespace embag::bench;

struct timing {
  double embag_seconds, torch_seconds;
};

// Median seconds per call of each, alternating calls over the rotating index sets.
timing interleaved(const workload& w, operation op, int threads) {
  const int64_t torch_mode = op == operation::forward_mean ? 1 : op == operation::forward_max ? 2 : 0;
  const at::Tensor weight = at::from_blob(const_cast<float*>(std::as_const(w.rows_table).view().data),
                                          {w.spec.rows, w.spec.dim}, {w.rows_table.row_stride(), 1}, at::kFloat);
  std::vector<at::Tensor> indices, offsets;
  for (const index_set& s : w.sets) {
    indices.push_back(at::from_blob(const_cast<std::int64_t*>(s.indices.data()), {std::int64_t(s.indices.size())}, at::kLong));
    offsets.push_back(at::from_blob(const_cast<std::int64_t*>(s.offsets.data()), {std::int64_t(s.offsets.size())}, at::kLong));
  }
  call_buffers buffers;
  const execution how = execution_for(available_isas().back(), threads);
  std::vector<double> ours, theirs;
  for (int call = 0; call < 8 * static_cast<int>(w.sets.size()) + 1; ++call) {
    const int set = call % static_cast<int>(w.sets.size());
    const auto t0 = std::chrono::steady_clock::now();
    run_operation(op, w, set, how, buffers);
    const auto t1 = std::chrono::steady_clock::now();
    at::embedding_bag(weight, indices[set], offsets[set], false, torch_mode);
    const auto t2 = std::chrono::steady_clock::now();
    if (call == 0) continue;  // warm-up
    ours.push_back(std::chrono::duration<double>(t1 - t0).count());
    theirs.push_back(std::chrono::duration<double>(t2 - t1).count());
  }
  return {median(ours), median(theirs)};
}

}  // namespace

int main(int argc, char** argv) {
  // PyTorch's OpenMP threads spin after each call by default, taking the cores from embag's TBB
  // threads in the next call: interleaved, that would time the spinning, not the kernels (embag on
  // 2 threads ran 2x slower). libgomp reads the policy when it loads: set it and start again.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);
  }
  workload_spec spec;
  if (argc > 1) spec.rows = std::atoll(argv[1]);
  if (argc > 2) spec.dim = std::atoll(argv[2]);
  const workload w(spec);
  std::printf("embag %s vs PyTorch %d.%d at::embedding_bag, %s, B=%lld\n", std::string(version()).c_str(),
              TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, spec.name().c_str(), (long long)spec.bags);
  std::printf("%-14s %7s %12s %12s %9s\n", "operation", "threads", "embag ms", "torch ms", "speed-up");
  for (int threads : {1, default_threads()}) {
    at::set_num_threads(threads);
    for (operation op : {operation::forward_sum, operation::forward_mean, operation::forward_max}) {
      const timing t = interleaved(w, op, threads);
      std::printf("%-14s %7d %12.3f %12.3f %8.2fx\n", operation_name(op), threads, t.embag_seconds * 1e3,
                  t.torch_seconds * 1e3, t.torch_seconds / t.embag_seconds);
    }
    if (threads == default_threads()) break;
  }
}
