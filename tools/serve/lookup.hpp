// Running lookup requests on a model snapshot: one request alone, or many merged into one embag
// call (the batcher), each request's rows split back out bit for bit what its own call gives.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <semaphore>
#include <span>
#include <string>
#include <thread>

#include "embag/embag.hpp"
#include "model.hpp"
#include "protocol.hpp"

namespace embag::serve {

// Why a request failed, as /metrics counts it.
enum class error_kind { malformed, unknown_table, bad_index, bad_request, too_large, unsupported_media_type, shed, internal };
inline constexpr error_kind all_error_kinds[] = {error_kind::malformed, error_kind::unknown_table, error_kind::bad_index,
                                                  error_kind::bad_request, error_kind::too_large,
                                                  error_kind::unsupported_media_type, error_kind::shed, error_kind::internal};
const char* to_string(error_kind kind) noexcept;

struct lookup_outcome {
  int status = 200;
  error_kind kind = error_kind::internal;  // when status != 200
  std::string error;                       // when status != 200: what and where
  lookup_response response;
};

struct lookup_limits {
  std::size_t max_response_bytes = 64u << 20;  // a small body may not ask for a huge response
};

// Runs every request on `snapshot`. One request runs its tables as given; several are merged per
// (table, weighted, output type) into one table of a single forward_batched call, and their rows
// copied back out. If that call fails (one request's bad id), each request runs alone, so the error
// is that request's only. outcomes.size() == requests.size(). Returns the ids that tables with
// bad_indices = skip left out.
std::int64_t run_lookups(const model& snapshot, std::span<const lookup_request* const> requests,
                         std::span<lookup_outcome> outcomes, const execution& how, const lookup_limits& limits,
                         workspace& scratch);

struct batching_settings {
  std::chrono::microseconds window{200};  // how long the first request of a batch waits for others
  std::size_t max_requests = 32;          // a batch runs as soon as it has this many
};

// Collects requests from the server's worker threads and runs them in batches on one thread.
class batcher {
 public:
  batcher(std::shared_ptr<model_store> store, batching_settings settings, execution how, lookup_limits limits,
          std::function<void(std::size_t batch_size, std::int64_t skipped_ids)> on_batch);
  ~batcher();  // runs what is queued, then stops
  // Blocks until the request's batch has run.
  lookup_outcome submit(const lookup_request& request);

 private:
  struct pending {
    const lookup_request* request;
    lookup_outcome outcome;
    std::binary_semaphore done;
    std::chrono::steady_clock::time_point arrived;
  };
  void run();

  std::shared_ptr<model_store> store_;
  batching_settings settings_;
  execution how_;
  lookup_limits limits_;
  std::function<void(std::size_t, std::int64_t)> on_batch_;
  std::mutex mutex_;
  std::condition_variable arrived_;
  std::deque<pending*> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace embag::serve
