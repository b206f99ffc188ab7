// The tables a server serves: a model directory's manifest, each table's rows mapped through
// embag's file API (or copied), and immutable snapshots of them that requests hold while they run.
//
// A deploy builds a new snapshot beside the current one and swaps it in atomically; a request keeps
// the snapshot it started with, so it never mixes versions, and a table's rows are unmapped when the
// last snapshot holding them is gone.
//
// Files truncated or rewritten in place: embag maps tables with MAP_SHARED and does not detect a file
// changing under its mapping (README, "Mapped tables and files that change": a read past a new end
// is SIGBUS). The server detects it instead, with a read lease (fcntl F_SETLEASE) on every mapped
// file: a process that opens the file for writing or truncates it is held by the kernel until the
// lease is released; the server meanwhile copies the still-intact rows into memory, swaps that copy
// in, and releases the lease when the last request on the mapping has ended. Where no lease can be
// taken (a file system without leases, a file open for writing) the table is served from a copy.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "embag/embag.hpp"
#include "embag/npy.hpp"
#include "embag/quantize.hpp"

namespace embag::serve {

// One table as the manifest describes it.
struct table_settings {
  std::string name;
  std::string file;  // relative to the model directory: a .npy (2-D <f4) or an .embag file
  embag::options opts;  // mode, padding_idx, bad_indices; execution is the server's
  npy_array::load load = npy_array::load::map;

  bool operator==(const table_settings& other) const;
};

// Reads model_dir/manifest.json:
//   {"tables": [{"name": "user", "file": "user.embag", "mode": "sum",
//                "padding_idx": 0, "bad_indices": "skip", "load": "map"}, ...]}
// Only name and file are required. Errors (errc::bad_file) name the manifest and the entry.
std::vector<table_settings> read_manifest(const std::filesystem::path& model_dir);

// Which file a table was read from: a deploy that renames a new file into place changes it.
struct file_identity {
  dev_t device = 0;
  ino_t inode = 0;
  std::int64_t bytes = 0;
  std::int64_t modified_ns = 0;
  bool operator==(const file_identity&) const = default;
};

// A read lease on a table file (see the top of this file). Releasing it (destruction) lets a held
// writer go on.
class file_lease {
 public:
  // The lease on `path`, whose breaking calls on_break on the lease-signal thread; nullopt with
  // `why` set where none can be taken.
  static std::optional<file_lease> take(const std::filesystem::path& path, std::function<void()> on_break,
                                        std::string& why);
  file_lease(file_lease&&) noexcept;
  file_lease& operator=(file_lease&& other) noexcept;
  ~file_lease();
  int fd() const noexcept { return fd_; }

 private:
  explicit file_lease(int fd) noexcept : fd_(fd) {}
  int fd_ = -1;
};

// One version of one table's rows. Alive while a snapshot or a request holds it.
class loaded_table {
 public:
  // Maps the file (taking a lease; a copy where none can be taken) or copies it, as settings say.
  // on_lease_break is called when a writer opens the mapped file.
  static std::shared_ptr<const loaded_table> open(const std::filesystem::path& model_dir, const table_settings& settings,
                                                  std::int64_t version, std::function<void()> on_lease_break);
  // A private copy of this table's rows read through its lease (the file is intact while a writer
  // waits for the lease), with the same settings and version.
  std::shared_ptr<const loaded_table> private_copy() const;

  const table_settings& settings() const noexcept { return settings_; }
  std::int64_t version() const noexcept { return version_; }
  const file_identity& identity() const noexcept { return identity_; }
  compressed_table_view rows() const noexcept { return rows_; }
  // "mapped", "copy" (asked for), "copy, no lease: ...", "copy after a writer opened the file"
  const std::string& how_loaded() const noexcept { return how_loaded_; }
  bool replaced_by_copy() const noexcept { return replaced_by_copy_; }

  loaded_table() = default;

 private:
  table_settings settings_;
  std::int64_t version_ = 0;
  file_identity identity_;
  std::string path_;
  std::string how_loaded_;
  bool replaced_by_copy_ = false;
  compressed_table_view rows_;
  // Destroyed in reverse order: the rows are unmapped before the lease lets a writer in.
  std::optional<file_lease> lease_;
  std::optional<npy_array> npy_;
  std::optional<compressed_table> embag_;
};

// An immutable set of tables: what one request (or one batch of them) reads.
struct model {
  std::uint64_t generation = 0;
  std::vector<std::shared_ptr<const loaded_table>> tables;

  const loaded_table* find(std::string_view name) const noexcept;
};

// The current model and the deploys that replace it.
class model_store : public std::enable_shared_from_this<model_store> {
 public:
  // Loads every table of the manifest; throws embag::error naming the file that failed.
  static std::shared_ptr<model_store> open(std::filesystem::path model_dir);

  std::shared_ptr<const model> current() const { return current_.load(); }
  const std::filesystem::path& directory() const noexcept { return model_dir_; }

  // Reads the manifest again and loads the tables whose file or settings changed (a table whose
  // rows were replaced by a copy is read again); the others keep their rows. All or nothing: on any
  // error the current model stays and the error is thrown. Returns the tables reloaded.
  std::vector<std::string> reload();

  // Called when a writer opens a mapped table's file: serve a private copy, let the writer go on.
  void replace_by_copy(const std::string& name, std::int64_t version);

  std::atomic<std::uint64_t> lease_breaks{0};

 private:
  explicit model_store(std::filesystem::path dir) : model_dir_(std::move(dir)) {}
  std::function<void()> lease_callback(const std::string& name, std::int64_t version);
  std::shared_ptr<const model> publish(std::vector<std::shared_ptr<const loaded_table>> tables);
  static void retire(std::shared_ptr<const model> previous);

  std::filesystem::path model_dir_;
  std::mutex deploy_mutex_;  // one deploy at a time
  std::atomic<std::shared_ptr<const model>> current_;
  std::int64_t next_version_ = 1;
};

}  // namespace embag::serve
