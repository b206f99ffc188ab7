#include "file_io.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "embag/embag.hpp"

namespace embag::detail {

void io_failure(const std::string& path, const std::string& what) {
  const std::string reason = std::strerror(errno);  // before any allocation can change errno
  throw error(errc::io_error, path + ": " + what + ": " + reason);
}

void malformed(const std::string& name, const std::string& what) { throw error(errc::bad_file, name + ": " + what); }

void free_deleter::operator()(void* p) const noexcept { std::free(p); }

owned_bytes allocate_bytes(std::size_t bytes) {
  const std::size_t alignment = bytes >= huge_page ? huge_page : file_data_alignment;
  const std::size_t rounded = std::max<std::size_t>((bytes + alignment - 1) / alignment * alignment, alignment);
  void* p = std::aligned_alloc(alignment, rounded);
  if (p == nullptr) throw std::bad_alloc();
  if (alignment == huge_page) madvise(p, rounded, MADV_HUGEPAGE);  // advice only
  return owned_bytes(static_cast<std::byte*>(p));
}

file_mapping::~file_mapping() {
  if (base_ != nullptr) munmap(base_, length_);
}

file_descriptor::~file_descriptor() {
  if (fd_ >= 0) ::close(fd_);
}

std::pair<file_descriptor, std::size_t> open_regular_file(const std::string& path) {
  file_descriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) io_failure(path, "cannot open");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) io_failure(path, "cannot stat");
  if (!S_ISREG(st.st_mode)) throw error(errc::io_error, path + ": not a regular file");
  return {std::move(fd), static_cast<std::size_t>(st.st_size)};
}

owned_bytes read_whole_file(const file_descriptor& fd, std::size_t size, const std::string& path) {
  owned_bytes file = allocate_bytes(size);
  for (std::size_t done = 0; done < size;) {
    const ssize_t n = ::pread(fd.get(), file.get() + done, size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) io_failure(path, "cannot read");
    if (n == 0) throw error(errc::io_error, path + ": the file shrank while it was read");
    done += static_cast<std::size_t>(n);
  }
  return file;
}

file_mapping map_whole_file(const file_descriptor& fd, std::size_t size, const std::string& path) {
  void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (base == MAP_FAILED) io_failure(path, "cannot map");
  return file_mapping(base, size);
}

namespace {

void write_all(int fd, std::span<const std::byte> bytes, const std::string& path) {
  const std::byte* p = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, std::min<std::size_t>(left, 1u << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) io_failure(path, "cannot write");
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

// A name beside `path` no other writer uses: the process id and a per-process counter, with
// O_EXCL catching a leftover of a crashed writer (then the next number is tried).
file_descriptor create_temporary(const std::string& path, std::string& temporary) {
  static std::atomic<std::uint64_t> counter{0};
  for (int attempt = 0; attempt < 100; ++attempt) {
    temporary = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return file_descriptor(fd);
    if (errno != EEXIST) io_failure(path, "cannot create a temporary file beside it");
  }
  io_failure(path, "cannot create a temporary file beside it");
}

}  // namespace

std::string write_temporary_beside(const std::string& path, std::initializer_list<std::span<const std::byte>> pieces) {
  std::string temporary;
  file_descriptor fd = create_temporary(path, temporary);
  try {
    for (std::span<const std::byte> piece : pieces) write_all(fd.get(), piece, path);
    // No fsync: this guards against a failed or interrupted writer, not a power cut, which would
    // cost a flush of every (possibly GiB) table written.
    if (::close(fd.release()) != 0) io_failure(path, "cannot write");
  } catch (...) {
    ::unlink(temporary.c_str());
    throw;
  }
  return temporary;
}

void write_file_in_place(const std::string& path, std::initializer_list<std::span<const std::byte>> pieces) {
  const std::string temporary = write_temporary_beside(path, pieces);
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    ::unlink(temporary.c_str());
    throw error(errc::io_error, path + ": cannot rename " + temporary + " into place: " + reason);
  }
}

}  // namespace embag::detail
