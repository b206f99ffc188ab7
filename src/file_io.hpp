// File plumbing shared by the .npy and .embag formats: errors naming the file, 64-byte aligned
// owned memory, read-only mappings, whole-file reads, and writes through a temporary file renamed
// into place (a failed write never leaves a truncated file).
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
owned_bytes allocate_bytes(std::size_t bytes);

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

// Writes the pieces, in order, to a new file beside `path` (its name + a unique suffix) and
// returns that file's name; on error removes it and throws errc::io_error naming `path`.
std::string write_temporary_beside(const std::string& path, std::initializer_list<std::span<const std::byte>> pieces);
// write_temporary_beside, then renamed over `path`.
void write_file_in_place(const std::string& path, std::initializer_list<std::span<const std::byte>> pieces);

}  // namespace embag::detail
