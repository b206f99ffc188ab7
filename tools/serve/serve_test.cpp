// embag-serve end to end, on loopback with ephemeral ports: round trips equal to the library's own
// call bit for bit, bad clients, deploys under load, a table file truncated in place, graceful
// shutdown. Every wait is bounded (a hung server fails the test, it does not hang it), and nothing
// asserts a duration.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "embag/batched.hpp"
#include "embag/npy.hpp"
#include "embag/quantize.hpp"
#include "protocol.hpp"
#include "server.hpp"

namespace fs = std::filesystem;
using namespace embag;
using namespace embag::serve;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string pattern = (fs::temp_directory_path() / "embag-serve-test-XXXXXX").string();
    path = ::mkdtemp(pattern.data());
  }
  ~temp_dir() { fs::remove_all(path); }
};

constexpr std::int64_t f32_rows = 300, f32_dim = 16, int8_rows = 200, int8_dim = 7;

std::vector<float> random_rows(std::int64_t rows, std::int64_t dim, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> value(-1, 1);
  std::vector<float> out(static_cast<std::size_t>(rows * dim));
  for (auto& v : out) v = value(rng);
  return out;
}

// A model of four tables: f32 sum, int8 rowwise mean (an odd dim), f32 max with padding, f32 sum
// that skips bad ids. Every value `fill` when given (deploy tests read the version from the values).
void write_model(const fs::path& dir, std::optional<float> fill = std::nullopt) {
  auto rows_of = [&](std::int64_t rows, std::int64_t dim, std::uint64_t seed) {
    auto v = random_rows(rows, dim, seed);
    if (fill) std::fill(v.begin(), v.end(), *fill);
    return v;
  };
  const auto a = rows_of(f32_rows, f32_dim, 1), c = rows_of(f32_rows, f32_dim, 3), d = rows_of(f32_rows, f32_dim, 4);
  const std::int64_t shape[] = {f32_rows, f32_dim};
  write_npy((dir / "a.npy").string(), npy_dtype::f32, shape, a.data());
  write_npy((dir / "c.npy").string(), npy_dtype::f32, shape, c.data());
  write_npy((dir / "d.npy").string(), npy_dtype::f32, shape, d.data());
  const auto b = rows_of(int8_rows, int8_dim, 2);
  write_embag((dir / "b.embag").string(),
              quantize(table_view<const float>{b.data(), int8_rows, int8_dim, 0}, dtype::int8_rowwise).view());
  std::ofstream(dir / "manifest.json") << R"({"tables": [
    {"name": "a", "file": "a.npy"},
    {"name": "b", "file": "b.embag", "mode": "mean"},
    {"name": "c", "file": "c.npy", "mode": "max", "padding_idx": 0},
    {"name": "d", "file": "d.npy", "bad_indices": "skip"}]})";
}

std::int64_t rows_of_table(const std::string& name) { return name == "b" ? int8_rows : f32_rows; }

lookup_request random_request(std::mt19937_64& rng, output_type output, bool weighted) {
  lookup_request request;
  request.output = output;
  for (const char* name : {"a", "b", "c", "d", "a"}) {  // "a" twice: one request may name a table twice
    table_request t;
    t.table = name;
    const int bags = std::uniform_int_distribution<int>(0, 6)(rng);
    for (int b = 0; b < bags; ++b) {
      const int length = std::uniform_int_distribution<int>(0, 5)(rng);
      t.lengths.push_back(length);
      for (int i = 0; i < length; ++i)
        t.indices.push_back(std::uniform_int_distribution<std::int64_t>(0, rows_of_table(name) - 1)(rng));
    }
    if (weighted && t.table != "c")  // max takes no weights
      for (std::size_t i = 0; i < t.indices.size(); ++i) t.weights.push_back(std::uniform_real_distribution<float>(0.5f, 2)(rng));
    request.tables.push_back(std::move(t));
  }
  return request;
}

// What the library's own call gives for one table of a request, on the table read straight from its
// file with the manifest's options.
std::vector<std::byte> direct_call(const fs::path& dir, const table_request& t, output_type output) {
  std::optional<npy_array> npy;
  std::optional<compressed_table> packed;
  compressed_table_view view;
  if (t.table == "b") {
    packed = compressed_table::open((dir / "b.embag").string());
    view = packed->view();
  } else {
    npy = npy_array::open((dir / (t.table + ".npy")).string());
    const auto v = npy->as_table();
    view = {reinterpret_cast<const std::byte*>(v.data), v.rows, v.dim, v.dim * 4, dtype::f32};
  }
  options opts;
  if (t.table == "b") opts.mode = mode::mean;
  if (t.table == "c") {
    opts.mode = mode::max;
    opts.padding_idx = 0;
  }
  index_report report;
  if (t.table == "d") {
    opts.bad_indices = bad_index_policy::skip;
  }
  opts.report = &report;
  const auto batch = bags::from_lengths(t.indices, t.lengths, t.weights);
  const auto rows = output_rows(batch, opts);
  const std::size_t element = output == output_type::f16 ? 2 : 4;
  std::vector<std::byte> out(static_cast<std::size_t>(rows * view.dim) * element);
  table_lookup lookup{view, batch, opts,
                      output_view(out.data(), rows, view.dim, 0, output == output_type::f16 ? dtype::f16 : dtype::f32)};
  execution inline_call;
  inline_call.max_threads = 1;
  forward_batched(std::span(&lookup, 1), inline_call);
  return out;
}

// A server on an ephemeral loopback port, run on its own thread, stopped on destruction.
struct running_server {
  std::unique_ptr<server> srv;
  int port = 0;
  std::thread thread;

  explicit running_server(server_settings s) {
    s.host = "127.0.0.1";
    s.port = 0;
    srv = std::make_unique<server>(std::move(s));
    port = srv->bind();
    thread = std::thread([this] { srv->run(); });
    httplib::Client probe("127.0.0.1", port);
    for (int i = 0; i < 500 && !probe.Get("/healthz"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ~running_server() {
    srv->stop();
    thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(std::chrono::seconds(30));
    return c;
  }
};

server_settings settings_for(const fs::path& dir) {
  server_settings s;
  s.model_dir = dir;
  s.watch = false;
  return s;
}

httplib::Result post_binary(httplib::Client& c, const lookup_request& r) {
  return c.Post("/v1/lookup", encode_binary_request(r), std::string(binary_content_type).c_str());
}

double metric(httplib::Client& c, const std::string& sample) {
  auto res = c.Get("/metrics");
  if (!res) return -1;
  std::istringstream lines(res->body);
  for (std::string line; std::getline(lines, line);)
    if (line.starts_with(sample + " ")) return std::stod(line.substr(sample.size() + 1));
  return -1;
}

void expect_equal_to_direct_calls(const fs::path& dir, const lookup_request& request, const lookup_response& response) {
  ASSERT_EQ(response.tables.size(), request.tables.size());
  for (std::size_t t = 0; t < request.tables.size(); ++t) {
    const auto expected = direct_call(dir, request.tables[t], response.output);
    EXPECT_EQ(response.tables[t].table, request.tables[t].table);
    ASSERT_EQ(response.tables[t].values.size(), expected.size()) << "tables[" << t << "]";
    EXPECT_TRUE(response.tables[t].values == expected)  // bytes: bit for bit
        << "tables[" << t << "] (" << request.tables[t].table << ") differs from the library's own call";
  }
}

// Round trips of many requests from several threads at once (so that the batcher merges them),
// each checked against the library's own call.
void round_trips(bool batching, body_format format) {
  temp_dir dir;
  write_model(dir.path);
  auto s = settings_for(dir.path);
  s.batching = batching;
  s.batch.window = std::chrono::milliseconds(2);
  running_server server(s);
  std::vector<std::thread> clients;
  std::atomic<int> checked{0};
  for (int c = 0; c < 4; ++c)
    clients.emplace_back([&, c] {
      auto client = server.client();
      std::mt19937_64 rng(100 + c);
      for (int i = 0; i < 25; ++i) {
        const auto output = format == body_format::json ? output_type::f32 : (i % 2 ? output_type::f16 : output_type::f32);
        const auto request = random_request(rng, output, i % 3 == 0);
        auto res = format == body_format::json ? client.Post("/v1/lookup", encode_json_request(request), "application/json")
                                               : post_binary(client, request);
        ASSERT_TRUE(res) << "no response";
        ASSERT_EQ(res->status, 200) << res->body;
        const auto response = format == body_format::json ? parse_json_response(res->body) : parse_binary_response(res->body);
        expect_equal_to_direct_calls(dir.path, request, response);
        ++checked;
      }
    });
  for (auto& t : clients) t.join();
  EXPECT_EQ(checked.load(), 100);
}

}  // namespace

TEST(Serve, BinaryRoundTripsEqualTheLibrarysCallBatched) { round_trips(true, body_format::binary); }
TEST(Serve, BinaryRoundTripsEqualTheLibrarysCallUnbatched) { round_trips(false, body_format::binary); }
TEST(Serve, JsonRoundTripsEqualTheLibrarysCallBatched) { round_trips(true, body_format::json); }
TEST(Serve, JsonRoundTripsEqualTheLibrarysCallUnbatched) { round_trips(false, body_format::json); }

TEST(Serve, Fp16InJsonIsTheFp32ItEquals) {
  temp_dir dir;
  write_model(dir.path);
  running_server server(settings_for(dir.path));
  auto client = server.client();
  std::mt19937_64 rng(7);
  auto request = random_request(rng, output_type::f16, false);
  auto res = client.Post("/v1/lookup", encode_json_request(request), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const auto response = parse_json_response(res->body);
  for (std::size_t t = 0; t < request.tables.size(); ++t) {
    const auto halves = direct_call(dir.path, request.tables[t], output_type::f16);
    ASSERT_EQ(response.tables[t].values.size(), halves.size() * 2);
    for (std::size_t i = 0; i < halves.size() / 2; ++i) {
      std::uint16_t bits;
      float got;
      std::memcpy(&bits, halves.data() + 2 * i, 2);
      std::memcpy(&got, response.tables[t].values.data() + 4 * i, 4);
      EXPECT_EQ(got, f16_to_f32(bits)) << "tables[" << t << "] element " << i;
    }
  }
}

// A bad model directory stops the server at start, naming the file and what is wrong in it.
TEST(Serve, ABadModelIsRefusedAtStartWithTheFileNamed) {
  temp_dir dir;
  write_model(dir.path);
  auto refused = [&](const std::string& manifest, const std::string& words) {
    std::ofstream(dir.path / "manifest.json") << manifest;
    try {
      server srv(settings_for(dir.path));
      ADD_FAILURE() << "accepted " << manifest;
    } catch (const embag::error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  refused("{\"tables\": [", "manifest.json: not JSON");
  refused(R"({"tables": [{"name": "a", "file": "a.npy", "mode": "median"}]})", "tables[0] (a): unknown mode \"median\"");
  refused(R"({"tables": [{"name": "a", "file": "a.npy"}, {"name": "a", "file": "c.npy"}]})", "the name \"a\" is used twice");
  refused(R"({"tables": [{"name": "a", "file": "a.csv"}]})", "\"a.csv\" is neither a .npy nor an .embag file");
  refused(R"({"tables": [{"name": "a", "file": "missing.npy"}]})", "missing.npy");
  refused(R"({"tables": [{"name": "a", "file": "a.npy", "padding_idx": 1000}]})", "a.npy (table a)");
}

TEST(Serve, ModelsAndMetricsDescribeTheTables) {
  temp_dir dir;
  write_model(dir.path);
  running_server server(settings_for(dir.path));
  auto client = server.client();
  auto models = client.Get("/v1/models");
  ASSERT_TRUE(models);
  const auto doc = nlohmann::json::parse(models->body);
  ASSERT_EQ(doc["tables"].size(), 4u);
  EXPECT_EQ(doc["tables"][1]["dtype"], "int8_rowwise");
  EXPECT_EQ(doc["tables"][1]["dim"], int8_dim);
  EXPECT_EQ(doc["tables"][0]["loaded"], "mapped");
  EXPECT_EQ(metric(client, "embag_serve_model_generation"), 1);
  EXPECT_EQ(metric(client, "embag_serve_table_version{table=\"d\"}"), 4);
}

// Every bad request gets its own 4xx with a message naming what is wrong, and the server goes on.
TEST(Serve, BadRequestsGetAClearError) {
  temp_dir dir;
  write_model(dir.path);
  auto s = settings_for(dir.path);
  s.max_body_bytes = 8192;
  s.limits.max_response_bytes = 1 << 16;
  running_server server(s);
  auto client = server.client();
  auto expect = [&](httplib::Result res, int status, const std::string& words, const std::string& kind) {
    ASSERT_TRUE(res) << "no response for the case expecting " << words;
    EXPECT_EQ(res->status, status) << res->body;
    EXPECT_NE(res->body.find(words), std::string::npos) << res->body;
    EXPECT_EQ(metric(client, "embag_serve_errors_total{kind=\"" + kind + "\"}") > 0, true) << kind;
  };
  const char* binary = "application/x-embag";
  expect(client.Post("/v1/lookup", "EMBX", binary), 400, "does not start with \"EMBQ\"", "malformed");
  // a table declaring 2^32 - 1 indices in a body of a few bytes: refused before any allocation
  std::string huge = encode_binary_request({output_type::f32, {{"a", {1}, {3}, {}}}});
  const std::uint32_t many = 0xffffffffu;
  std::memcpy(huge.data() + 12 + 2 + 1 + 2 + 4, &many, 4);
  expect(client.Post("/v1/lookup", huge, binary), 400, "4294967295 indices at byte", "malformed");
  std::string trailing = encode_binary_request({output_type::f32, {{"a", {1}, {3}, {}}}}) + "xx";
  expect(client.Post("/v1/lookup", trailing, binary), 400, "2 bytes after the last table", "malformed");
  expect(client.Post("/v1/lookup", "{\"tables\": [", "application/json"), 400, "not JSON", "malformed");
  expect(client.Post("/v1/lookup", R"({"tables": [{"table": "a", "lengths": [1], "indices": ["x"]}]})", "application/json"), 400,
         "tables[0].indices[0] is not an integer", "malformed");
  expect(post_binary(client, {output_type::f32, {{"a", {1}, {2}, {}}, {"nope", {1}, {2}, {}}}}), 404,
         "tables[1]: no table named \"nope\"", "unknown_table");
  expect(post_binary(client, {output_type::f32, {{"a", {1}, {2}, {}}, {"b", {2}, {1, 200}, {}}}}), 400,
         "tables[1]", "bad_index");
  expect(post_binary(client, {output_type::f32, {{"a", {2}, {1}, {}}}}), 400, "length", "bad_request");
  expect(client.Post("/v1/lookup", std::string(9000, 'x'), binary), 413, "larger than the limit of 8192 bytes", "too_large");
  // 1000 empty bags of 16 floats: a small body asking for 64 KB
  expect(post_binary(client, {output_type::f32, {{"a", std::vector<std::int32_t>(1100, 0), {}, {}}}}), 413,
         "exceed the limit of 65536 bytes", "too_large");
  expect(client.Post("/v1/lookup", "x", "text/plain"), 415, "application/x-embag", "unsupported_media_type");
  // an id out of range on the table that skips them: served, the bad id left out and counted
  auto skipped = post_binary(client, {output_type::f32, {{"d", {2}, {1, 9999}, {}}}});
  ASSERT_TRUE(skipped);
  EXPECT_EQ(skipped->status, 200);
  EXPECT_EQ(metric(client, "embag_serve_skipped_ids_total"), 1);
  // a bad request batched with good ones fails alone
  std::vector<std::thread> good;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i)
    good.emplace_back([&] {
      auto c = server.client();
      if (auto r = post_binary(c, {output_type::f32, {{"b", {2}, {1, 2}, {}}}}); r && r->status == 200) ++ok;
    });
  expect(post_binary(client, {output_type::f32, {{"b", {2}, {1, 200}, {}}}}), 400, "indices[1] = 200", "bad_index");
  for (auto& t : good) t.join();
  EXPECT_EQ(ok.load(), 4);
}

namespace {

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    return -1;
  }
  timeval limit{30, 0};  // a server that never answers fails the test instead of hanging it
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  return fd;
}

void send_all(int fd, std::string_view bytes) { ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), ssize_t(bytes.size())); }

std::string http_post(const std::string& body) {
  return "POST /v1/lookup HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-embag\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

}  // namespace

TEST(Serve, SlowAndVanishingClientsDoNotStopTheServer) {
  temp_dir dir;
  write_model(dir.path);
  auto s = settings_for(dir.path);
  s.read_timeout = std::chrono::milliseconds(300);
  s.keep_alive_timeout = std::chrono::seconds(1);  // how long a connection may wait before its request
  running_server server(s);
  const std::string body = encode_binary_request({output_type::f32, {{"a", {2}, {1, 2}, {}}}});
  // slow: half the headers, then nothing; the server cuts it off (an error response at most, then
  // the connection closed)
  int slow = connect_to(server.port);
  ASSERT_GE(slow, 0);
  send_all(slow, "POST /v1/lookup HTTP/1.1\r\nHost: x\r\n");
  std::string reply;
  char buffer[512];
  for (ssize_t got; (got = ::recv(slow, buffer, sizeof buffer, 0)) > 0;) reply.append(buffer, static_cast<std::size_t>(got));
  EXPECT_TRUE(reply.empty() || reply.starts_with("HTTP/1.1 4")) << reply;
  EXPECT_EQ(::recv(slow, buffer, 1, 0), 0) << "the server did not close a connection that stopped sending";
  ::close(slow);
  // gone mid-body, and gone before reading a large response
  int gone = connect_to(server.port);
  send_all(gone, http_post(body).substr(0, 120));
  ::close(gone);
  std::vector<std::int32_t> lengths(2000, 1);
  std::vector<std::int64_t> indices(2000, 5);
  int impatient = connect_to(server.port);
  send_all(impatient, http_post(encode_binary_request({output_type::f32, {{"a", lengths, indices, {}}}})));
  ::close(impatient);
  // still serving
  auto client = server.client();
  auto res = client.Post("/v1/lookup", body, "application/x-embag");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST(Serve, ConnectionsBeyondTheWorkersAreShed) {
  temp_dir dir;
  write_model(dir.path);
  auto s = settings_for(dir.path);
  s.workers = 2;
  s.queued_connections = 1;
  s.read_timeout = std::chrono::seconds(20);
  running_server server(s);
  // connections that send nothing hold both workers and the queue's one place
  std::vector<int> idle;
  for (int i = 0; i < 3; ++i) idle.push_back(connect_to(server.port));
  int extra = connect_to(server.port);
  // twice on one connection: the first request's body must not be read as the second request
  for (int round = 0; round < 2; ++round) {
    // headers and body in two writes, as most clients send them
    const auto request = http_post(encode_binary_request({output_type::f32, {{"a", {1}, {1}, {}}}}));
    const auto headers_end = request.find("\r\n\r\n") + 4;
    send_all(extra, request.substr(0, headers_end));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    send_all(extra, request.substr(headers_end));
    std::string reply;
    char buffer[512];
    for (ssize_t got; reply.find("\r\n\r\n") == std::string::npos && (got = ::recv(extra, buffer, 1, 0)) > 0;)
      reply.append(buffer, static_cast<std::size_t>(got));
    const auto length = std::stoul(reply.substr(reply.find("Content-Length: ") + 16));
    for (ssize_t got; reply.size() < reply.find("\r\n\r\n") + 4 + length && (got = ::recv(extra, buffer, 1, 0)) > 0;)
      reply.append(buffer, static_cast<std::size_t>(got));
    EXPECT_TRUE(reply.starts_with("HTTP/1.1 503")) << "round " << round << ": " << reply;
    EXPECT_NE(reply.find("the server is busy"), std::string::npos) << reply;
  }
  ::close(extra);
  for (int fd : idle) ::close(fd);
  auto client = server.client();
  EXPECT_GE(metric(client, "embag_serve_errors_total{kind=\"shed\"}"), 1);
  // the shed request's body was read as its body, not as the connection's next request
  EXPECT_EQ(metric(client, "embag_serve_errors_total{kind=\"malformed\"}"), 0);
}

namespace {

// Clients that check every response: status 200, and every value of every table equal to
// length x (the version's fill value), one fill per response.
struct checking_clients {
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0}, mixed{0};
  std::set<float> fills_seen;
  std::mutex mutex;
  std::vector<std::thread> threads;

  checking_clients(const running_server& server, int count, std::int64_t high_row) {
    for (int c = 0; c < count; ++c)
      threads.emplace_back([this, &server, high_row] {
        auto client = server.client();
        // rows near the end: past the middle of the file a truncation would cut off
        const lookup_request request{output_type::f32, {{"a", {2}, {high_row, high_row - 1}, {}}, {"c", {1}, {high_row}, {}},
                                                        {"d", {1}, {high_row - 2}, {}}}};
        while (!stop) {
          auto res = post_binary(client, request);
          if (!res || res->status != 200) {
            ++failed;
            continue;
          }
          const auto response = parse_binary_response(res->body);
          std::set<float> fills;
          for (const auto& t : response.tables) {
            for (std::size_t i = 0; i < t.values.size() / 4; ++i) {
              float v;
              std::memcpy(&v, t.values.data() + 4 * i, 4);
              fills.insert(t.table == "a" ? v / 2 : v);
            }
          }
          if (fills.size() != 1) ++mixed;
          std::lock_guard lock(mutex);
          fills_seen.insert(fills.begin(), fills.end());
          ++ok;
        }
      });
  }
  void finish() {
    stop = true;
    for (auto& t : threads) t.join();
  }
};

}  // namespace

TEST(Serve, DeploysUnderLoadLoseNoRequestAndMixNoVersions) {
  temp_dir dir;
  write_model(dir.path, 1.0f);
  running_server server(settings_for(dir.path));
  checking_clients clients(server, 3, f32_rows - 1);
  auto admin = server.client();
  for (int version = 2; version <= 6; ++version) {
    while (clients.ok.load() < version * 20) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    write_model(dir.path, float(version));  // every file renamed into place
    auto res = admin.Post("/v1/reload", "", "text/plain");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
  }
  while (clients.ok.load() < 7 * 20) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  clients.finish();
  EXPECT_EQ(clients.failed.load(), 0);
  EXPECT_EQ(clients.mixed.load(), 0);
  EXPECT_TRUE(clients.fills_seen.contains(6.0f));
  EXPECT_EQ(metric(admin, "embag_serve_model_generation"), 6);
}

TEST(Serve, ATableRenamedIntoPlaceIsNoticedWithoutARequest) {
  temp_dir dir;
  write_model(dir.path, 1.0f);
  auto s = settings_for(dir.path);
  s.watch = true;
  running_server server(s);
  auto client = server.client();
  const std::vector<float> twos(static_cast<std::size_t>(f32_rows * f32_dim), 2.0f);
  const std::int64_t shape[] = {f32_rows, f32_dim};
  write_npy((dir.path / "a.npy").string(), npy_dtype::f32, shape, twos.data());
  float value = 0;
  for (int i = 0; i < 1000 && value != 2.0f; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    auto res = post_binary(client, {output_type::f32, {{"a", {1}, {3}, {}}}});
    ASSERT_TRUE(res);
    std::memcpy(&value, parse_binary_response(res->body).tables[0].values.data(), 4);
  }
  EXPECT_EQ(value, 2.0f) << "the server still serves the old a.npy 10 s after the new one was renamed into place";
}

// A mapped table file truncated and rewritten in place (a careless deploy: `cp` over it) while
// requests read its last rows. The writer's open is held by the server's lease until the server
// serves a copy; without that the requests reading past the new end would die with SIGBUS.
TEST(Serve, ATableFileTruncatedInPlaceDoesNotTakeTheServerDown) {
  temp_dir dir;
  write_model(dir.path, 1.0f);
  running_server server(settings_for(dir.path));
  checking_clients clients(server, 2, f32_rows - 1);
  while (clients.ok.load() < 50) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const auto path = dir.path / "a.npy";
  const auto bytes = fs::file_size(path);
  const int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC);  // held until the server lets go
  ASSERT_GE(fd, 0) << std::strerror(errno);
  const std::string half(bytes / 2, 'x');
  ASSERT_EQ(::write(fd, half.data(), half.size()), ssize_t(half.size()));
  const int served_before = clients.ok.load();
  while (clients.ok.load() < served_before + 50) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto admin = server.client();
  auto reload = admin.Post("/v1/reload", "", "text/plain");  // the half-written file is refused
  ASSERT_TRUE(reload);
  EXPECT_EQ(reload->status, 409) << reload->body;
  EXPECT_NE(reload->body.find("a.npy"), std::string::npos) << reload->body;
  ::close(fd);
  clients.finish();
  EXPECT_EQ(clients.failed.load(), 0);
  EXPECT_EQ(clients.mixed.load(), 0);
  EXPECT_EQ(clients.fills_seen, std::set<float>{1.0f});
  EXPECT_EQ(metric(admin, "embag_serve_lease_breaks_total"), 1);
  // a proper deploy afterwards is served
  write_model(dir.path, 3.0f);
  reload = admin.Post("/v1/reload", "", "text/plain");
  ASSERT_TRUE(reload);
  EXPECT_EQ(reload->status, 200) << reload->body;
}

TEST(Serve, StopFinishesTheRequestsInFlight) {
  temp_dir dir;
  write_model(dir.path);
  auto s = settings_for(dir.path);
  s.batch.window = std::chrono::milliseconds(500);  // holds each request in the batcher
  s.batch.max_requests = 64;
  auto server = std::make_unique<running_server>(s);
  std::mt19937_64 rng(5);
  const auto request = random_request(rng, output_type::f32, false);
  std::atomic<int> status{0};
  std::thread in_flight([&] {
    auto client = server->client();
    if (auto res = post_binary(client, request)) {
      status = res->status;
      expect_equal_to_direct_calls(dir.path, request, parse_binary_response(res->body));
    }
  });
  auto observer = server->client();
  for (int i = 0; i < 3000 && metric(observer, "embag_serve_in_flight") != 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const int port = server->port;
  server.reset();  // stop() and run() returning
  in_flight.join();
  EXPECT_EQ(status.load(), 200);
  EXPECT_EQ(connect_to(port), -1) << "still accepting after stop";
}

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
