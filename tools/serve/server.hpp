// embag-serve: the HTTP server. Endpoints:
//   POST /v1/lookup   a batch of bags for one or many tables (protocol.hpp: binary or JSON)
//   POST /v1/reload   reads the manifest again and swaps in the tables that changed
//   GET  /v1/models   the tables served: name, file, rows, dim, dtype, mode, version, how loaded
//   GET  /healthz     "ok"
//   GET  /metrics     Prometheus text: requests, errors by kind, latency and batch-size histograms,
//                     table versions, sheds, reloads, lease breaks
//
// Threads: httplib gives each connection a worker of a fixed pool; past the pool and a short queue,
// connections go to one shedding thread, which answers their lookups 503 (health and metrics still). With batching on, workers hand
// their parsed requests to the batcher and wait; with it off, each worker makes its own embag call
// with max_threads = 1 (a server that already parallelises across requests).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "lookup.hpp"
#include "model.hpp"

namespace embag::serve {

struct server_settings {
  std::filesystem::path model_dir;
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (bind() says which)
  int workers = 16;  // connections served at once (a keep-alive connection holds its worker)
  int queued_connections = 16;  // connections waiting for a worker before new ones are shed (503)
  bool batching = true;
  batching_settings batch;
  int batch_threads = 0;  // max_threads of the batched call (0: every thread of the TBB arena)
  lookup_limits limits;
  std::size_t max_body_bytes = 16u << 20;  // larger bodies are 413, before they are read
  std::chrono::milliseconds read_timeout{5000}, write_timeout{5000};  // slow clients are cut off
  std::chrono::milliseconds keep_alive_timeout{5000};
  bool watch = true;
  // The deploy thread's nice value: 19 gives deploys only the core's spare time, but a deploy thread
  // preempted while holding a kernel lock (the mmap lock, mapping a table) then stalls the requests
  // waiting on it; on this 2-core machine neither setting measured better than the noise.
  int deploy_nice = 0;  // reload when a file of the model directory is renamed into place or written
};

class server {
 public:
  // Loads the model; throws embag::error naming the file that failed.
  explicit server(server_settings settings);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  int bind();  // the port bound; throws embag::error(io_error) when it cannot
  void run();  // serves until stop()
  // Stops accepting; requests already received are answered before run() returns.
  void stop();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace embag::serve
