// File plumbing shared by the .npy and .embag formats: errors naming the file, 64-byte aligned
// owned memory, read-only mappings, whole-file reads, and outputs written all or none through
// temporary files renamed into place (a failed write never leaves a truncated or half-set output).
#pragma once

#include <cstddef>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <utility>

namespace embag::detail {

inline constexpr std::size_t file_data_alignment = 64;  // where .npy and .embag data start
inline constexpr std::size_t huge_page = 2u << 20;

// errc::io_error with the system's reason (errno), or errc::bad_file, each "name: what".
[[noreturn]] void io_failure(const std::string& path, const std::string& what);
[[noreturn]] void malformed(const std::string& name, const std::string& what);

// Owned data: 64-byte aligned (2 MiB and huge-page advised when large, as embag::table is), freed
// with std::free.
struct free_deleter {
  void operator()(void* p) const noexcept;
};
using owned_bytes = std::unique_ptr<std::byte, free_deleter>;
// `what` names the bytes should they not fit (errc::out_of_memory).
owned_bytes allocate_bytes(std::size_t bytes, const std::string& what);

// A read-only mapping of a whole file, unmapped on destruction.
class file_mapping {
 public:
  file_mapping() = default;
  file_mapping(void* base, std::size_t length) : base_(base), length_(length) {}
  file_mapping(file_mapping&& other) noexcept
      : base_(std::exchange(other.base_, nullptr)), length_(std::exchange(other.length_, 0)) {}
  file_mapping& operator=(file_mapping&& other) noexcept {
    std::swap(base_, other.base_);
    std::swap(length_, other.length_);
    return *this;
  }
  ~file_mapping();
  std::span<const std::byte> bytes() const { return {static_cast<const std::byte*>(base_), length_}; }

 private:
  void* base_ = nullptr;
  std::size_t length_ = 0;
};

class file_descriptor {
 public:
  explicit file_descriptor(int fd) : fd_(fd) {}
  file_descriptor(file_descriptor&& other) noexcept : fd_(other.release()) {}
  file_descriptor& operator=(file_descriptor&&) = delete;
  ~file_descriptor();
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Opens a regular file for reading and returns its size.
std::pair<file_descriptor, std::size_t> open_regular_file(const std::string& path);
// The whole file (`size` bytes) read into owned memory.
owned_bytes read_whole_file(const file_descriptor& fd, std::size_t size, const std::string& path);
// The whole file mapped read-only; `size` must be > 0.
file_mapping map_whole_file(const file_descriptor& fd, std::size_t size, const std::string& path);

// The outputs of one command or call, written all or none. Each target is checked when declared
// and again at commit: it must be a regular file (a symbolic link is followed: its target is
// written and the link kept) or absent in a writable directory, and no output may be the same file
// as another output or as an input (device and inode of existing files, the resolved path of new
// ones). stage() writes a temporary file beside the target; commit() renames every one into place,
// keeping each replaced file aside (a hard link) until all renames succeeded, so that a failure
// midway puts back what was already replaced. Destroyed without commit(), it removes its
// temporaries. Errors are errc::io_error naming the file and the reason.
class output_transaction {
 public:
  output_transaction();
  output_transaction(const output_transaction&) = delete;
  output_transaction& operator=(const output_transaction&) = delete;
  ~output_transaction();

  // `role` names the file in errors (a command-line flag, say); empty, the path alone does.
  void reads(const std::string& path, const std::string& role);
  void writes(const std::string& path, const std::string& role);
  // Writes the pieces, in order, to the temporary file of `path` (declared here if it was not).
  void stage(const std::string& path, std::initializer_list<std::span<const std::byte>> pieces);
  void commit();
  // Removes every temporary staged so far (stage() does on its own errors).
  void abandon() noexcept;

 private:
  struct state;
  std::unique_ptr<state> state_;
};

}  // namespace embag::detail
