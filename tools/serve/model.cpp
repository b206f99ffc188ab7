#include "model.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <unordered_map>

#include "embag/batched.hpp"

namespace embag::serve {
namespace {

[[noreturn]] void bad_manifest(const std::filesystem::path& manifest, const std::string& what) {
  throw error(errc::bad_file, manifest.string() + ": " + what);
}

file_identity identity_of(const struct stat& st) {
  return {st.st_dev, st.st_ino, static_cast<std::int64_t>(st.st_size),
          static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

file_identity identity_of_path(const std::filesystem::path& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0)
    throw error(errc::io_error, path.string() + ": cannot stat: " + std::strerror(errno));
  return identity_of(st);
}

// Lease breaks arrive as a signal (F_SETSIG) naming the file descriptor. Its handler only writes the
// descriptor to a pipe (async-signal-safe, whichever thread the kernel picked); one thread reads
// the pipe and runs the callback registered for that descriptor.
class lease_signals {
 public:
  static lease_signals& instance() {
    static lease_signals signals;
    return signals;
  }
  int signal_number() const noexcept { return signal_number_; }

  void add(int fd, std::function<void()> on_break) {
    std::lock_guard lock(mutex_);
    callbacks_[fd] = std::move(on_break);
  }
  void remove(int fd) {
    std::lock_guard lock(mutex_);
    callbacks_.erase(fd);
  }

 private:
  lease_signals() : signal_number_(SIGRTMIN + 2) {
    if (::pipe2(pipe_, O_CLOEXEC) != 0) throw error(errc::io_error, std::string("lease signal pipe: ") + std::strerror(errno));
    write_end().store(pipe_[1]);
    struct sigaction action{};
    action.sa_sigaction = &on_signal;
    action.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&action.sa_mask);
    ::sigaction(signal_number_, &action, nullptr);
    reader_ = std::thread([this] { run(); });
  }
  ~lease_signals() {
    const int stop = -1;
    [[maybe_unused]] auto written = ::write(pipe_[1], &stop, sizeof stop);
    reader_.join();
  }

  static std::atomic<int>& write_end() {
    static std::atomic<int> fd{-1};
    return fd;
  }
  static void on_signal(int, siginfo_t* info, void*) {
    const int saved_errno = errno;
    const int fd = info->si_fd;
    [[maybe_unused]] auto written = ::write(write_end().load(), &fd, sizeof fd);
    errno = saved_errno;
  }

  void run() {
    for (;;) {
      int fd = -1;
      const ssize_t got = ::read(pipe_[0], &fd, sizeof fd);
      if (got < 0 && errno == EINTR) continue;
      if (got != static_cast<ssize_t>(sizeof fd) || fd < 0) return;
      std::function<void()> callback;
      {
        std::lock_guard lock(mutex_);
        // A descriptor closed and reused by a new lease since the signal: that lease is whole
        // (F_RDLCK; a lease being broken reports what it must become, F_UNLCK), leave it be.
        auto it = callbacks_.find(fd);
        if (it != callbacks_.end() && ::fcntl(fd, F_GETLEASE) != F_RDLCK) callback = it->second;
      }
      if (callback) callback();
    }
  }

  int signal_number_;
  int pipe_[2] = {-1, -1};
  std::mutex mutex_;
  std::unordered_map<int, std::function<void()>> callbacks_;
  std::thread reader_;
};

std::vector<std::byte> read_whole_file(int fd, const std::string& name) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) throw error(errc::io_error, name + ": cannot stat: " + std::strerror(errno));
  std::vector<std::byte> bytes(static_cast<std::size_t>(st.st_size));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t got = ::pread(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw error(errc::io_error, name + ": cannot read: " + std::strerror(errno));
    if (got == 0) throw error(errc::bad_file, name + ": the file shrank while it was being read");
    done += static_cast<std::size_t>(got);
  }
  return bytes;
}

bool is_npy(const std::filesystem::path& path) { return path.extension() == ".npy"; }

// A .npy table's rows as the f32 compressed_table_view the batched call reads.
compressed_table_view rows_of(const npy_array& array) {
  const auto view = array.as_table();
  const std::int64_t stride = view.row_stride ? view.row_stride : view.dim;
  return {reinterpret_cast<const std::byte*>(view.data), view.rows, view.dim,
          stride * static_cast<std::int64_t>(sizeof(float)), dtype::f32};
}

// Faults in every page of a freshly mapped table before it is published: otherwise the first
// requests after a deploy each take the page faults of the rows they read. MADV_POPULATE_READ
// (Linux 5.14) does it in one call; older kernels read a byte of each page.
void fault_in(compressed_table_view rows) {
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t bytes = static_cast<std::size_t>(rows.rows) * static_cast<std::size_t>(rows.row_stride);
  if (bytes == 0) return;
  const auto begin = reinterpret_cast<std::uintptr_t>(rows.data) & ~(page - 1);
  const auto end = reinterpret_cast<std::uintptr_t>(rows.data) + bytes;
#ifdef MADV_POPULATE_READ
  if (::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ) == 0) return;
#endif
  [[maybe_unused]] volatile std::byte sink{};
  for (std::uintptr_t at = begin; at < end; at += page) sink = *reinterpret_cast<const std::byte*>(std::max(at, reinterpret_cast<std::uintptr_t>(rows.data)));
}

}  // namespace

bool table_settings::operator==(const table_settings& other) const {
  return name == other.name && file == other.file && opts.mode == other.opts.mode &&
         opts.padding_idx == other.opts.padding_idx && opts.bad_indices == other.opts.bad_indices && load == other.load;
}

std::vector<table_settings> read_manifest(const std::filesystem::path& model_dir) {
  const auto manifest = model_dir / "manifest.json";
  std::ifstream in(manifest);
  if (!in) throw error(errc::io_error, manifest.string() + ": cannot open: " + std::strerror(errno));
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    bad_manifest(manifest, std::string("not JSON: ") + e.what());
  }
  if (!doc.is_object() || !doc.contains("tables") || !doc["tables"].is_array() || doc["tables"].empty())
    bad_manifest(manifest, "needs {\"tables\": [...]} with at least one table");
  std::vector<table_settings> tables;
  std::set<std::string> names;
  const auto& entries = doc["tables"];
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const auto& entry = entries[i];
    const std::string where = "tables[" + std::to_string(i) + "]";
    if (!entry.is_object()) bad_manifest(manifest, where + " is not an object");
    for (const auto& [key, value] : entry.items()) {
      static const std::set<std::string> known = {"name", "file", "mode", "padding_idx", "bad_indices", "load"};
      if (!known.contains(key)) bad_manifest(manifest, where + " has an unknown key \"" + key + "\"");
    }
    auto text = [&](const char* key) -> std::optional<std::string> {
      if (!entry.contains(key)) return std::nullopt;
      if (!entry[key].is_string()) bad_manifest(manifest, where + "." + key + " is not a string");
      return entry[key].get<std::string>();
    };
    table_settings t;
    auto name = text("name");
    auto file = text("file");
    if (!name || name->empty()) bad_manifest(manifest, where + " needs a \"name\"");
    if (!file || file->empty()) bad_manifest(manifest, where + " (" + *name + ") needs a \"file\"");
    if (!names.insert(*name).second) bad_manifest(manifest, where + ": the name \"" + *name + "\" is used twice");
    t.name = *name;
    t.file = *file;
    const auto extension = std::filesystem::path(t.file).extension();
    if (extension != ".npy" && extension != ".embag")
      bad_manifest(manifest, where + " (" + t.name + "): \"" + t.file + "\" is neither a .npy nor an .embag file");
    if (auto m = text("mode")) {
      auto parsed = mode_from_string(*m);
      if (!parsed) bad_manifest(manifest, where + " (" + t.name + "): unknown mode \"" + *m + "\"");
      t.opts.mode = *parsed;
    }
    if (auto p = text("bad_indices")) {
      auto parsed = bad_index_policy_from_string(*p);
      if (!parsed) bad_manifest(manifest, where + " (" + t.name + "): bad_indices \"" + *p + "\" is not error or skip");
      t.opts.bad_indices = *parsed;
    }
    if (auto l = text("load")) {
      if (*l == "map") t.load = npy_array::load::map;
      else if (*l == "copy") t.load = npy_array::load::copy;
      else bad_manifest(manifest, where + " (" + t.name + "): load \"" + *l + "\" is not map or copy");
    }
    if (entry.contains("padding_idx")) {
      if (!entry["padding_idx"].is_number_integer())
        bad_manifest(manifest, where + " (" + t.name + "): padding_idx is not an integer");
      t.opts.padding_idx = entry["padding_idx"].get<std::int64_t>();
    }
    tables.push_back(std::move(t));
  }
  return tables;
}

// ---------------------------------------------------------------------------------------------

std::optional<file_lease> file_lease::take(const std::filesystem::path& path, std::function<void()> on_break,
                                           std::string& why) {
  auto& signals = lease_signals::instance();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    why = std::string("cannot open: ") + std::strerror(errno);
    return std::nullopt;
  }
  file_lease lease(fd);
  // The callback first: a writer may arrive the moment the lease exists.
  signals.add(fd, std::move(on_break));
  if (::fcntl(fd, F_SETSIG, signals.signal_number()) != 0 || ::fcntl(fd, F_SETLEASE, F_RDLCK) != 0) {
    why = std::string("no read lease: ") + std::strerror(errno);
    return std::nullopt;
  }
  return lease;
}

file_lease::file_lease(file_lease&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

file_lease& file_lease::operator=(file_lease&& other) noexcept {
  std::swap(fd_, other.fd_);
  return *this;
}

file_lease::~file_lease() {
  if (fd_ < 0) return;
  lease_signals::instance().remove(fd_);
  ::close(fd_);  // releases the lease
}

// ---------------------------------------------------------------------------------------------

std::shared_ptr<const loaded_table> loaded_table::open(const std::filesystem::path& model_dir, const table_settings& settings,
                                                       std::int64_t version, std::function<void()> on_lease_break) {
  auto t = std::make_shared<loaded_table>();
  t->settings_ = settings;
  t->version_ = version;
  t->path_ = (model_dir / settings.file).string();
  auto how = settings.load;
  t->how_loaded_ = how == npy_array::load::map ? "mapped" : "copy";
  // A lease is on one inode: if a deploy renames another file into place between taking it and the
  // library's open, the two differ, and the open is tried again.
  for (int attempt = 0;; ++attempt) {
    std::string why;
    if (how == npy_array::load::map) {
      t->lease_ = file_lease::take(t->path_, on_lease_break, why);
      if (!t->lease_) {
        how = npy_array::load::copy;
        t->how_loaded_ = "copy (" + why + ")";
      }
    }
    if (is_npy(settings.file)) {
      t->npy_ = npy_array::open(t->path_, how);
      t->rows_ = rows_of(*t->npy_);
    } else {
      t->embag_ = compressed_table::open(t->path_, how);
      t->rows_ = t->embag_->view();
    }
    t->identity_ = identity_of_path(t->path_);
    if (!t->lease_) break;
    struct stat leased{};
    ::fstat(t->lease_->fd(), &leased);
    if (identity_of(leased) == t->identity_) break;
    if (attempt == 3) throw error(errc::io_error, t->path_ + ": replaced again and again while it was being opened");
    t->lease_.reset();
  }
  if (how == npy_array::load::map) fault_in(t->rows_);
  // The table's options checked once here, with the library's own messages, not on every request.
  try {
    embag::options opts = settings.opts;
    index_report report;
    opts.report = &report;
    const std::vector<std::int32_t> no_bags;
    table_lookup probe{t->rows_, bags::from_lengths(no_bags, no_bags), opts, output_view(static_cast<float*>(nullptr), 0, t->rows_.dim)};
    execution inline_call;
    inline_call.max_threads = 1;
    forward_batched(std::span(&probe, 1), inline_call);
  } catch (const error& e) {
    throw error(e.code(), t->path_ + " (table " + settings.name + "): " + e.what());
  }
  return t;
}

std::shared_ptr<const loaded_table> loaded_table::private_copy() const {
  auto copy = std::make_shared<loaded_table>();
  copy->settings_ = settings_;
  copy->version_ = version_;
  copy->identity_ = identity_;
  copy->path_ = path_;
  copy->how_loaded_ = "copy (a writer opened the mapped file)";
  copy->replaced_by_copy_ = true;
  // Through the lease's descriptor: the same inode that is mapped, intact while the writer waits.
  const auto bytes = read_whole_file(lease_->fd(), path_);
  if (npy_) {
    copy->npy_ = npy_array::from_bytes(bytes, path_);
    copy->rows_ = rows_of(*copy->npy_);
  } else {
    copy->embag_ = compressed_table::from_bytes(bytes, path_);
    copy->rows_ = copy->embag_->view();
  }
  return copy;
}

const loaded_table* model::find(std::string_view name) const noexcept {
  for (const auto& t : tables)
    if (t->settings().name == name) return t.get();
  return nullptr;
}

// ---------------------------------------------------------------------------------------------

std::shared_ptr<model_store> model_store::open(std::filesystem::path model_dir) {
  auto store = std::shared_ptr<model_store>(new model_store(std::move(model_dir)));
  store->reload();
  return store;
}

std::function<void()> model_store::lease_callback(const std::string& name, std::int64_t version) {
  return [weak = weak_from_this(), name, version] {
    if (auto store = weak.lock()) store->replace_by_copy(name, version);
  };
}

std::shared_ptr<const model> model_store::publish(std::vector<std::shared_ptr<const loaded_table>> tables) {
  auto next = std::make_shared<model>();
  auto previous = current_.load();
  next->generation = previous ? previous->generation + 1 : 1;
  next->tables = std::move(tables);
  current_.store(std::move(next));
  return previous;
}

// The previous snapshot's tables that the new one dropped are unmapped when its last request ends.
// Waiting for that here, holding the last reference, puts the munmap on the deploying thread rather
// than on a request's. The caller must hold no other reference.
void model_store::retire(std::shared_ptr<const model> previous) {
  for (int waited_ms = 0; previous && previous.use_count() > 1 && waited_ms < 10'000; ++waited_ms)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

std::vector<std::string> model_store::reload() {
  std::lock_guard lock(deploy_mutex_);
  const auto settings = read_manifest(model_dir_);
  auto now = current_.load();
  std::vector<std::shared_ptr<const loaded_table>> tables;
  std::vector<std::string> reloaded;
  for (const auto& s : settings) {
    std::shared_ptr<const loaded_table> kept;
    if (now) {
      for (const auto& t : now->tables)
        if (t->settings() == s && !t->replaced_by_copy() && t->identity() == identity_of_path(model_dir_ / s.file)) kept = t;
    }
    if (kept) {
      tables.push_back(std::move(kept));
    } else {
      const auto version = next_version_++;
      tables.push_back(loaded_table::open(model_dir_, s, version, lease_callback(s.name, version)));
      reloaded.push_back(s.name);
    }
  }
  const bool same_list = now && now->tables.size() == tables.size() &&
                         std::equal(tables.begin(), tables.end(), now->tables.begin());
  now.reset();
  if (!same_list) retire(publish(std::move(tables)));
  return reloaded;
}

void model_store::replace_by_copy(const std::string& name, std::int64_t version) {
  std::lock_guard lock(deploy_mutex_);
  ++lease_breaks;
  auto tables = current_.load()->tables;
  for (auto& t : tables) {
    if (t->settings().name != name || t->version() != version || t->replaced_by_copy()) continue;
    try {
      t = t->private_copy();
    } catch (const error&) {
      // The rows could not be copied: the mapping stays, and the kernel lets the writer in after
      // /proc/sys/fs/lease-break-time. Nothing better can be done without the rows.
      return;
    }
    retire(publish(std::move(tables)));
    return;
  }
}

}  // namespace embag::serve
