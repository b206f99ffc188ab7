// embag-serve: serves a model directory's tables over HTTP (server.hpp). SIGINT or SIGTERM stops it
// gracefully: no new connections, requests already received answered.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <thread>

#include "server.hpp"

int main(int argc, char** argv) {
  embag::serve::server_settings s;
  std::int64_t window_us = s.batch.window.count();
  std::int64_t read_timeout_ms = s.read_timeout.count();
  bool no_batching = false, no_watch = false;
  CLI::App app{"embag-serve: an HTTP inference server for the tables of a model directory"};
  app.add_option("model_dir", s.model_dir, "directory with manifest.json and the table files it names")->required();
  app.add_option("--host", s.host, "address to listen on")->capture_default_str();
  app.add_option("--port", s.port, "port (0: any free port, printed)")->capture_default_str();
  app.add_option("--workers", s.workers, "connections served at once")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--queue", s.queued_connections, "connections waiting for a worker before new ones get 503")
      ->capture_default_str()->check(CLI::Range(0, 1 << 20));
  app.add_flag("--no-batching", no_batching, "each request its own embag call with max_threads = 1");
  app.add_option("--batch-window-us", window_us, "how long a batch's first request waits for others")->capture_default_str()
      ->check(CLI::Range(0, 1'000'000));
  app.add_option("--batch-max", s.batch.max_requests, "requests per batch at most")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--batch-threads", s.batch_threads, "threads of a batched call (0: all)")->capture_default_str();
  app.add_option("--max-body-bytes", s.max_body_bytes, "larger request bodies get 413")->capture_default_str();
  app.add_option("--max-response-bytes", s.limits.max_response_bytes, "requests asking for more get 413")->capture_default_str();
  app.add_option("--read-timeout-ms", read_timeout_ms, "a client this slow to send is cut off")->capture_default_str();
  app.add_option("--deploy-nice", s.deploy_nice, "nice value of the deploy thread (0: the requests' priority)")
      ->capture_default_str()->check(CLI::Range(0, 19));
  app.add_flag("--no-watch", no_watch, "deploy only on POST /v1/reload, not when files change");
  CLI11_PARSE(app, argc, argv);
  s.batching = !no_batching;
  s.batch.window = std::chrono::microseconds(window_us);
  s.read_timeout = s.write_timeout = std::chrono::milliseconds(read_timeout_ms);
  s.watch = !no_watch;

  // Before any thread starts, so that every thread inherits the mask: only the waiter below takes
  // these signals. A client that disconnects mid-response must not kill the server.
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  try {
    embag::serve::server srv(s);
    const int port = srv.bind();
    std::printf("embag-serve: serving %s on http://%s:%d (%s)\n", s.model_dir.c_str(), s.host.c_str(), port,
                s.batching ? "batching" : "no batching");
    std::fflush(stdout);
    std::thread stopper([&] {
      int signal = 0;
      sigwait(&stop_signals, &signal);
      std::fprintf(stderr, "embag-serve: signal %d, finishing the requests in flight\n", signal);
      srv.stop();
    });
    srv.run();
    // run() also returns if listening fails: wake the stopper so that it can be joined.
    pthread_kill(stopper.native_handle(), SIGTERM);
    stopper.join();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "embag-serve: %s\n", e.what());
    return 1;
  }
  return 0;
}
