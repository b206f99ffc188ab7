#include "server.hpp"

#include <poll.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cstdio>
#include <future>
#include <httplib.h>
#include <list>
#include <nlohmann/json.hpp>
#include <set>

namespace embag::serve {
namespace {

using clock = std::chrono::steady_clock;

// A histogram Prometheus reads: cumulative counts per upper bound, a count and a sum.
class histogram {
 public:
  explicit histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
  void observe(double value) {
    const auto bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
    counts_[static_cast<std::size_t>(bucket)].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(value, std::memory_order_relaxed);
  }
  void render(std::string& out, const std::string& name, const std::string& help) const {
    out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
    std::uint64_t cumulative = 0;
    char line[160];
    for (std::size_t b = 0; b <= bounds_.size(); ++b) {
      cumulative += counts_[b].load(std::memory_order_relaxed);
      if (b < bounds_.size()) std::snprintf(line, sizeof line, "%s_bucket{le=\"%g\"} %llu\n", name.c_str(), bounds_[b],
                                            static_cast<unsigned long long>(cumulative));
      else std::snprintf(line, sizeof line, "%s_bucket{le=\"+Inf\"} %llu\n", name.c_str(), static_cast<unsigned long long>(cumulative));
      out += line;
    }
    std::snprintf(line, sizeof line, "%s_sum %.9g\n%s_count %llu\n", name.c_str(), sum_.load(), name.c_str(),
                  static_cast<unsigned long long>(cumulative));
    out += line;
  }

 private:
  std::vector<double> bounds_;
  std::vector<std::atomic<std::uint64_t>> counts_;
  std::atomic<double> sum_{0};
};

// The connection pool behind httplib: `workers` threads take connections from a queue of at most
// `queued`; a connection arriving when the queue is full goes to the shedding thread, which answers
// its lookups 503 (httplib hands a task queue only a closure that owns the socket, so shedding happens
// in the request handler, told by this thread-local flag).
thread_local bool on_shedding_thread = false;

class bounded_pool : public httplib::TaskQueue {
 public:
  bounded_pool(int workers, int queued) : capacity_(static_cast<std::size_t>(workers + queued)) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(jobs_, false); });
    threads_.emplace_back([this] { work(shed_jobs_, true); });
  }
  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lock(mutex_);
      // Counted from enqueue to the end of the job, not by the queue's length: a worker that has
      // not yet taken its job must not make room for one more.
      const bool admitted = admitted_ < capacity_;
      admitted_ += admitted;
      (admitted ? jobs_ : shed_jobs_).push_back([this, admitted, job = std::move(fn)] {
        job();
        if (!admitted) return;
        std::lock_guard done(mutex_);
        --admitted_;
      });
    }
    ready_.notify_all();
  }
  void shutdown() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void work(std::list<std::function<void()>>& jobs, bool shedding) {
    on_shedding_thread = shedding;
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [&] { return stopping_ || !jobs.empty(); });
        if (jobs.empty()) return;  // stopping, every accepted connection served
        job = std::move(jobs.front());
        jobs.pop_front();
      }
      job();
    }
  }
  std::size_t capacity_, admitted_ = 0;  // connections served or waiting, at most workers + queued
  std::mutex mutex_;
  std::condition_variable ready_;
  std::list<std::function<void()>> jobs_, shed_jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

constexpr const char* error_kind_header = "X-Embag-Error";

}  // namespace

struct server::impl {
  server_settings settings;
  std::shared_ptr<model_store> store;
  std::unique_ptr<batcher> batches;
  httplib::Server http;
  int port = -1;

  // /metrics
  std::atomic<std::uint64_t> requests_binary{0}, requests_json{0}, skipped_ids{0}, reloads_ok{0}, reloads_failed{0};
  std::atomic<std::int64_t> in_flight{0};
  std::atomic<std::uint64_t> errors[std::size(all_error_kinds)] = {};
  histogram latency{{0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1}};
  histogram batch_sizes{{1, 2, 4, 8, 16, 32, 64, 128}};

  // the deploy thread (start_deployer)
  int inotify_fd = -1, stop_fd = -1, reload_fd = -1;
  std::mutex deploy_mutex;
  std::vector<std::promise<std::vector<std::string>>*> reload_requests;
  std::thread deployer;

  explicit impl(server_settings s) : settings(std::move(s)), store(model_store::open(settings.model_dir)) {
    if (settings.batching) {
      execution how;
      how.max_threads = settings.batch_threads;
      batches = std::make_unique<batcher>(store, settings.batch, how, settings.limits, [this](std::size_t size, std::int64_t skipped) {
        batch_sizes.observe(static_cast<double>(size));
        skipped_ids += static_cast<std::uint64_t>(skipped);
      });
    }
    routes();
    start_deployer();
  }

  ~impl() {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto written = ::write(stop_fd, &one, sizeof one);
    deployer.join();
    for (int fd : {inotify_fd, stop_fd, reload_fd})
      if (fd >= 0) ::close(fd);
  }

  void count_error(error_kind kind) { errors[static_cast<std::size_t>(kind)].fetch_add(1, std::memory_order_relaxed); }

  void error_response(httplib::Response& res, body_format format, int status, error_kind kind, const std::string& message) {
    count_error(kind);
    res.status = status;
    res.set_header(error_kind_header, to_string(kind));
    if (format == body_format::json) res.set_content(nlohmann::json{{"error", message}, {"kind", to_string(kind)}}.dump(), "application/json");
    else res.set_content(message + "\n", "text/plain");
  }

  void lookup(const httplib::Request& req, httplib::Response& res) {
    // Shed here, once httplib has read the body: answered before the body is read, the body's bytes
    // would be read as the connection's next request. The connection stays on the shedding thread
    // (httplib closes on a request's "Connection: close", not a response's); clients close on it.
    if (on_shedding_thread) {
      res.set_header("Retry-After", "1");
      res.set_header("Connection", "close");
      error_response(res, body_format::binary, 503, error_kind::shed,
                     "the server is busy: all " + std::to_string(settings.workers) + " workers and the queue of " +
                         std::to_string(settings.queued_connections) + " connections are taken; retry later");
      return;
    }
    // Counted on every way out, an exception (answered 500 by httplib's handler) included.
    struct in_flight_request {
      impl& self;
      clock::time_point start = clock::now();
      explicit in_flight_request(impl& s) : self(s) { self.in_flight.fetch_add(1); }
      ~in_flight_request() {
        self.latency.observe(std::chrono::duration<double>(clock::now() - start).count());
        self.in_flight.fetch_sub(1);
      }
    } counted(*this);
    const std::string content_type = req.get_header_value("Content-Type");
    const bool json = content_type.starts_with("application/json");
    const auto format = json ? body_format::json : body_format::binary;
    if (!json && content_type != binary_content_type) {
      error_response(res, body_format::binary, 415, error_kind::unsupported_media_type,
                     "Content-Type \"" + content_type + "\": send application/x-embag or application/json");
    } else {
      (json ? requests_json : requests_binary).fetch_add(1, std::memory_order_relaxed);
      try {
        const auto request = json ? parse_json_request(req.body) : parse_binary_request(req.body);
        lookup_outcome outcome;
        if (batches) {
          outcome = batches->submit(request);
        } else {
          thread_local workspace scratch;
          const lookup_request* one[] = {&request};
          execution how;
          how.max_threads = 1;
          skipped_ids += static_cast<std::uint64_t>(run_lookups(*store->current(), one, std::span(&outcome, 1), how, settings.limits, scratch));
          batch_sizes.observe(1);
        }
        if (outcome.status != 200) error_response(res, format, outcome.status, outcome.kind, outcome.error);
        else if (json) res.set_content(encode_json_response(outcome.response), "application/json");
        else res.set_content(encode_binary_response(outcome.response), std::string(binary_content_type).c_str());
      } catch (const malformed_body& e) {
        error_response(res, format, 400, error_kind::malformed, std::string("malformed body: ") + e.what());
      }
    }
  }

  // POST /v1/reload: run by the deploy thread, answered when it is done.
  void reload(httplib::Response& res) {
    std::promise<std::vector<std::string>> done;
    auto result = done.get_future();
    {
      std::lock_guard lock(deploy_mutex);
      reload_requests.push_back(&done);
    }
    const std::uint64_t one = 1;
    [[maybe_unused]] auto written = ::write(reload_fd, &one, sizeof one);
    try {
      const auto reloaded = result.get();
      res.set_content(nlohmann::json{{"generation", store->current()->generation}, {"reloaded", reloaded}}.dump(), "application/json");
    } catch (const std::exception& e) {
      res.status = 409;
      res.set_content(nlohmann::json{{"error", std::string("reload failed; still serving generation ") +
                                                   std::to_string(store->current()->generation) + ": " + e.what()}}.dump(),
                      "application/json");
    }
  }

  // One reload, counted; errors are the caller's to report.
  std::vector<std::string> counted_reload() {
    try {
      auto reloaded = store->reload();
      ++reloads_ok;
      return reloaded;
    } catch (...) {
      ++reloads_failed;
      throw;
    }
  }

  std::string models() const {
    const auto snapshot = store->current();
    nlohmann::json tables = nlohmann::json::array();
    for (const auto& t : snapshot->tables) {
      const auto& s = t->settings();
      nlohmann::json entry = {{"name", s.name}, {"file", s.file}, {"rows", t->rows().rows}, {"dim", t->rows().dim},
                              {"dtype", to_string(t->rows().element_type)}, {"mode", to_string(s.opts.mode)},
                              {"bad_indices", to_string(s.opts.bad_indices)}, {"version", t->version()},
                              {"loaded", t->how_loaded()}};
      if (s.opts.padding_idx) entry["padding_idx"] = *s.opts.padding_idx;
      tables.push_back(std::move(entry));
    }
    return nlohmann::json{{"generation", snapshot->generation}, {"tables", std::move(tables)}}.dump(2) + "\n";
  }

  std::string metrics() const {
    std::string out;
    auto counter = [&](const std::string& name, const std::string& help, const std::vector<std::pair<std::string, double>>& samples,
                       const char* type = "counter") {
      out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
      for (const auto& [labels, value] : samples) {
        char number[32];
        std::snprintf(number, sizeof number, "%.17g", value);
        out += name + labels + " " + number + "\n";
      }
    };
    counter("embag_serve_requests_total", "Lookup requests received, by body format.",
            {{"{format=\"binary\"}", double(requests_binary)}, {"{format=\"json\"}", double(requests_json)}});
    std::vector<std::pair<std::string, double>> by_kind;
    for (auto kind : all_error_kinds)
      by_kind.push_back({std::string("{kind=\"") + to_string(kind) + "\"}", double(errors[static_cast<std::size_t>(kind)].load())});
    counter("embag_serve_errors_total", "Requests answered with an error (4xx, 5xx), by kind; shed is 503 when every worker is busy.", by_kind);
    counter("embag_serve_in_flight", "Lookup requests being served now.", {{"", double(in_flight.load())}}, "gauge");
    latency.render(out, "embag_serve_request_seconds", "Lookup time in the server, body read to response ready.");
    batch_sizes.render(out, "embag_serve_batch_requests", "Requests per embag call.");
    counter("embag_serve_skipped_ids_total", "Out-of-range ids left out by tables with bad_indices = skip.", {{"", double(skipped_ids)}});
    counter("embag_serve_reloads_total", "Deploys (POST /v1/reload or a watched file), by result.",
            {{"{result=\"ok\"}", double(reloads_ok)}, {"{result=\"failed\"}", double(reloads_failed)}});
    counter("embag_serve_lease_breaks_total", "Writers that opened a mapped table file (served from a copy since).",
            {{"", double(store->lease_breaks.load())}});
    const auto snapshot = store->current();
    counter("embag_serve_model_generation", "The model snapshot served now.", {{"", double(snapshot->generation)}}, "gauge");
    std::vector<std::pair<std::string, double>> versions;
    for (const auto& t : snapshot->tables) versions.push_back({"{table=\"" + t->settings().name + "\"}", double(t->version())});
    counter("embag_serve_table_version", "The version of each table served now.", versions, "gauge");
    return out;
  }

  void routes() {
    http.new_task_queue = [this] { return new bounded_pool(settings.workers, settings.queued_connections); };
    http.set_payload_max_length(settings.max_body_bytes);
    http.set_read_timeout(settings.read_timeout);
    http.set_write_timeout(settings.write_timeout);
    http.set_keep_alive_timeout(std::max<time_t>(1, std::chrono::duration_cast<std::chrono::seconds>(settings.keep_alive_timeout).count()));
    http.set_keep_alive_max_count(1u << 20);
    http.set_tcp_nodelay(true);
    // Errors httplib answers itself (a body over the limit, a malformed request line, an unknown
    // path): counted, and given a message.
    http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request&, httplib::Response& res) {
      if (res.has_header(error_kind_header)) return httplib::Server::HandlerResponse::Unhandled;
      if (res.status == 413) {
        error_response(res, body_format::binary, 413, error_kind::too_large,
                       "the body is larger than the limit of " + std::to_string(settings.max_body_bytes) + " bytes");
      } else if (res.body.empty()) {
        error_response(res, body_format::binary, res.status, error_kind::malformed,
                       "HTTP " + std::to_string(res.status) + ": the endpoints are POST /v1/lookup, POST /v1/reload, "
                       "GET /v1/models, GET /healthz, GET /metrics");
      }
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      error_response(res, body_format::binary, 500, error_kind::internal, "internal error: " + what);
    });
    http.Post("/v1/lookup", [this](const httplib::Request& req, httplib::Response& res) { lookup(req, res); });
    http.Post("/v1/reload", [this](const httplib::Request&, httplib::Response& res) { reload(res); });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { res.set_content(models(), "application/json"); });
    http.Get("/healthz", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics(), "text/plain; version=0.0.4");
    });
  }

  // Deploys run on one thread (at settings.deploy_nice), one at a time: POST /v1/reload, and with
  // `watch`, a table file (or the manifest) renamed into place or closed after writing (rewritten in
  // place, its writer done).
  void start_deployer() {
    stop_fd = ::eventfd(0, EFD_CLOEXEC);
    reload_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (stop_fd < 0 || reload_fd < 0) throw error(errc::io_error, std::string("eventfd: ") + std::strerror(errno));
    if (settings.watch) {
      inotify_fd = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
      if (inotify_fd < 0 || ::inotify_add_watch(inotify_fd, settings.model_dir.c_str(), IN_MOVED_TO | IN_CLOSE_WRITE) < 0)
        throw error(errc::io_error, settings.model_dir.string() + ": cannot watch for deploys (inotify): " + std::strerror(errno));
    }
    deployer = std::thread([this] {
      if (settings.deploy_nice) ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), settings.deploy_nice);
      deploy_loop();
    });
  }

  // Whether the inotify events waiting name the manifest or a table file.
  bool deploy_noticed() {
    alignas(inotify_event) char buffer[4096];
    bool relevant = false;
    std::set<std::string> names = {"manifest.json"};
    for (const auto& t : store->current()->tables) names.insert(t->settings().file);
    for (ssize_t got; (got = ::read(inotify_fd, buffer, sizeof buffer)) > 0;) {
      for (ssize_t at = 0; at < got;) {
        const auto* event = reinterpret_cast<const inotify_event*>(buffer + at);
        if (event->len && names.contains(event->name)) relevant = true;
        at += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
      }
    }
    return relevant;
  }

  void deploy_loop() {
    for (;;) {
      pollfd fds[] = {{stop_fd, POLLIN, 0}, {reload_fd, POLLIN, 0}, {inotify_fd, POLLIN, 0}};
      if (::poll(fds, inotify_fd >= 0 ? 3 : 2, -1) < 0 && errno != EINTR) return;
      if (fds[0].revents) return;
      if (fds[1].revents) {
        std::uint64_t count;
        [[maybe_unused]] auto got = ::read(reload_fd, &count, sizeof count);
        std::vector<std::promise<std::vector<std::string>>*> waiting;
        {
          std::lock_guard lock(deploy_mutex);
          waiting.swap(reload_requests);
        }
        try {
          const auto reloaded = counted_reload();  // one reload answers every request that waited for it
          for (auto* p : waiting) p->set_value(reloaded);
        } catch (...) {
          for (auto* p : waiting) p->set_exception(std::current_exception());
        }
      }
      if (inotify_fd >= 0 && fds[2].revents && deploy_noticed()) {
        // A deploy often renames several files one after another: let them land, then reload once.
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        deploy_noticed();
        try {
          const auto reloaded = counted_reload();
          if (!reloaded.empty())
            std::fprintf(stderr, "embag-serve: generation %llu: reloaded %zu tables\n",
                         static_cast<unsigned long long>(store->current()->generation), reloaded.size());
        } catch (const std::exception& e) {
          std::fprintf(stderr, "embag-serve: reload failed, still serving generation %llu: %s\n",
                       static_cast<unsigned long long>(store->current()->generation), e.what());
        }
      }
    }
  }
};

server::server(server_settings settings) : impl_(std::make_unique<impl>(std::move(settings))) {}
server::~server() = default;

int server::bind() {
  auto& s = impl_->settings;
  impl_->port = s.port == 0 ? impl_->http.bind_to_any_port(s.host) : (impl_->http.bind_to_port(s.host, s.port) ? s.port : -1);
  if (impl_->port < 0)
    throw error(errc::io_error, "cannot listen on " + s.host + ":" + std::to_string(s.port) + ": " + std::strerror(errno));
  return impl_->port;
}

void server::run() { impl_->http.listen_after_bind(); }

void server::stop() { impl_->http.stop(); }

}  // namespace embag::serve
