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
#include <vector>

#include "allocation.hpp"
#include "embag/embag.hpp"

namespace embag::detail {

void io_failure(const std::string& path, const std::string& what) {
  const std::string reason = std::strerror(errno);  // before any allocation can change errno
  throw error(errc::io_error, path + ": " + what + ": " + reason);
}

void malformed(const std::string& name, const std::string& what) { throw error(errc::bad_file, name + ": " + what); }

void free_deleter::operator()(void* p) const noexcept { std::free(p); }

owned_bytes allocate_bytes(std::size_t bytes, const std::string& what) {
  const std::size_t alignment = bytes >= huge_page ? huge_page : file_data_alignment;
  const std::size_t rounded = std::max<std::size_t>((bytes + alignment - 1) / alignment * alignment, alignment);
  void* p = std::aligned_alloc(alignment, rounded);
  if (p == nullptr) out_of_memory(what, rounded);
  if (alignment == huge_page) madvise(p, rounded, MADV_HUGEPAGE);  // advice only
  return owned_bytes(static_cast<std::byte*>(p));
}

file_mapping::~file_mapping() {
  if (base_ != nullptr) munmap(base_, length_);
}

file_descriptor::~file_descriptor() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

std::string kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "a special file";
}

}  // namespace

std::pair<file_descriptor, std::size_t> open_regular_file(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, before the check
  // below could refuse it (it does nothing to a regular file's reads).
  file_descriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) io_failure(path, "cannot open");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) io_failure(path, "cannot stat");
  if (!S_ISREG(st.st_mode)) throw error(errc::io_error, path + ": " + kind_of(st.st_mode) + ", not a regular file");
  return {std::move(fd), static_cast<std::size_t>(st.st_size)};
}

owned_bytes read_whole_file(const file_descriptor& fd, std::size_t size, const std::string& path) {
  owned_bytes file = allocate_bytes(size, "reading " + path);
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

namespace {

// Which file a path names: device and inode when it exists, else its resolved path (the canonical
// directory and the name), so that two spellings of one new file are seen to be one.
struct file_identity {
  bool exists = false;
  dev_t device = 0;
  ino_t inode = 0;
  std::string resolved_path;

  bool same_as(const file_identity& other) const {
    if (exists != other.exists) return false;
    return exists ? device == other.device && inode == other.inode : resolved_path == other.resolved_path;
  }
};

std::string directory_of(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

[[noreturn]] void refuse(const std::string& path, const std::string& why) { throw error(errc::io_error, path + ": " + why); }

std::string described(const std::string& role, const std::string& path) { return role.empty() ? path : role + " " + path; }

// A path resolved by realpath(3), or an io_error naming `path` and `what` failed.
std::string resolved(const std::string& name, const std::string& path, const std::string& what) {
  char* real = ::realpath(name.c_str(), nullptr);
  if (real == nullptr) io_failure(path, what);
  std::string out = real;
  std::free(real);
  return out;
}

}  // namespace

struct output_transaction::state {
  struct input {
    std::string path, role;
    file_identity identity;
  };
  struct output {
    std::string path, role;
    std::string file;          // what is replaced: `path`, or the file its symbolic link names
    file_identity identity;
    mode_t permissions = 0;    // an existing target's, kept by its replacement
    std::string temporary;     // staged and not yet in place
    std::string backup;        // during commit: the replaced file, kept aside
    bool backup_is_a_link = false;
    bool in_place = false;
  };
  std::vector<input> inputs;
  std::vector<output> outputs;

  // Resolves an output's target and checks it can be replaced by a regular file.
  static void resolve(output& o) {
    o.file = o.path;
    o.identity = {};
    o.permissions = 0;
    struct stat st {};
    int found = ::lstat(o.path.c_str(), &st);
    if (found != 0 && errno != ENOENT) io_failure(o.path, "cannot inspect the output");
    if (found == 0 && S_ISLNK(st.st_mode)) {  // written through: the link stays, its target is replaced
      if (::stat(o.path.c_str(), &st) != 0) {
        if (errno == ENOENT)
          refuse(o.path, "a symbolic link to a missing file (embag writes through a link only to an existing file)");
        io_failure(o.path, "cannot follow the symbolic link");
      }
      o.file = resolved(o.path, o.path, "cannot follow the symbolic link");
    }
    const std::string directory = directory_of(o.file);
    struct stat dir {};
    if (::stat(directory.c_str(), &dir) != 0) io_failure(o.path, "cannot write in its directory " + directory);
    if (!S_ISDIR(dir.st_mode)) refuse(o.path, directory + " is not a directory");
    // the effective user decides, as for the rename itself (access(2) would ask for the real one)
    if (::faccessat(AT_FDCWD, directory.c_str(), W_OK | X_OK, AT_EACCESS) != 0)
      io_failure(o.path, "cannot write in its directory " + directory);
    if (found == 0) {
      if (!S_ISREG(st.st_mode))
        refuse(o.path, "is " + kind_of(st.st_mode) + ", not a regular file: embag replaces only regular files");
      // In a sticky directory (/tmp) only a file's owner, the directory's owner or root may replace it.
      const uid_t me = ::geteuid();
      if ((dir.st_mode & S_ISVTX) != 0 && st.st_uid != me && dir.st_uid != me && me != 0)
        refuse(o.path, "belongs to another user in a sticky directory: it cannot be replaced");
      o.identity = {true, st.st_dev, st.st_ino, {}};
      o.permissions = st.st_mode & 07777;
    } else {
      const std::string name = o.file.substr(o.file.rfind('/') == std::string::npos ? 0 : o.file.rfind('/') + 1);
      o.identity.resolved_path = resolved(directory, o.path, "cannot resolve its directory " + directory) + "/" + name;
    }
  }

  // No output may be another output or an input: writing it would lose one of them.
  void check_distinct(const output& o) const {
    for (const input& i : inputs)
      if (i.identity.same_as(o.identity)) collision(o, "input", i.role, i.path);
    for (const output& other : outputs)
      if (&other != &o && other.identity.same_as(o.identity)) collision(o, "output", other.role, other.path);
  }

  [[noreturn]] static void collision(const output& o, const char* other_kind, const std::string& other_role,
                                     const std::string& other_path) {
    refuse(o.path, "the output" + (o.role.empty() ? "" : " " + o.role) + " is the same file as the " + other_kind +
                       " " + described(other_role, other_path));
  }

  output& find_or_declare(const std::string& path) {
    for (output& o : outputs)
      if (o.path == path) return o;
    declare(path, "");
    return outputs.back();
  }

  void declare(const std::string& path, const std::string& role) {
    output o;
    o.path = path;
    o.role = role;
    resolve(o);
    check_distinct(o);
    outputs.push_back(std::move(o));
  }

  // Keeps an existing target aside (a second hard link; renamed aside where links are not
  // supported), then renames the temporary over it.
  static void replace(output& o) {
    static std::atomic<std::uint64_t> counter{0};
    if (o.identity.exists) {
      for (int attempt = 0; o.backup.empty(); ++attempt) {
        const std::string name = o.file + ".old-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
        if (::link(o.file.c_str(), name.c_str()) == 0) {
          o.backup = name;
          o.backup_is_a_link = true;
        } else if (errno == EEXIST && attempt < 100) {
          continue;
        } else if ((errno == EPERM || errno == EXDEV || errno == EMLINK || errno == ENOSYS || errno == EOPNOTSUPP) &&
                   ::rename(o.file.c_str(), name.c_str()) == 0) {
          o.backup = name;
        } else if (errno == ENOENT) {
          break;  // gone since it was checked: nothing to keep
        } else {
          io_failure(o.path, "cannot keep the file it replaces aside as " + name);
        }
      }
    }
    if (::rename(o.temporary.c_str(), o.file.c_str()) != 0) {
      const std::string reason = std::strerror(errno);
      put_back(o);
      throw error(errc::io_error, o.path + ": cannot rename " + o.temporary + " into place: " + reason);
    }
    o.temporary.clear();
    o.in_place = true;
  }

  // Undoes replace(): the old file back in place, or the new one removed where there was none.
  // Returns "" or what could not be undone.
  static std::string put_back(output& o) noexcept {
    std::string failed;
    if (o.backup.empty()) {
      if (o.in_place && ::unlink(o.file.c_str()) != 0) failed = o.path + " (written, and it could not be removed)";
    } else if (o.in_place || !o.backup_is_a_link) {
      if (::rename(o.backup.c_str(), o.file.c_str()) != 0) failed = o.path + " (its old contents are in " + o.backup + ")";
    } else {
      ::unlink(o.backup.c_str());
    }
    o.backup.clear();
    o.in_place = false;
    return failed;
  }

  void remove_temporaries() noexcept {
    for (output& o : outputs)
      if (!o.temporary.empty()) {
        ::unlink(o.temporary.c_str());
        o.temporary.clear();
      }
  }
};

output_transaction::output_transaction() : state_(std::make_unique<state>()) {}

output_transaction::~output_transaction() { abandon(); }

void output_transaction::abandon() noexcept { state_->remove_temporaries(); }

void output_transaction::reads(const std::string& path, const std::string& role) {
  state::input i;
  i.path = path;
  i.role = role;
  struct stat st {};
  // A missing or unreadable input is its reader's error to report; an input is never created.
  if (::stat(path.c_str(), &st) != 0) return;
  i.identity = {true, st.st_dev, st.st_ino, {}};
  for (const state::output& o : state_->outputs)
    if (o.identity.same_as(i.identity)) state::collision(o, "input", role, path);
  state_->inputs.push_back(std::move(i));
}

void output_transaction::writes(const std::string& path, const std::string& role) { state_->declare(path, role); }

void output_transaction::stage(const std::string& path, std::initializer_list<std::span<const std::byte>> pieces) {
  try {
    state::output& o = state_->find_or_declare(path);
    if (!o.temporary.empty()) refuse(path, "staged twice");
    file_descriptor fd = create_temporary(o.file, o.temporary);
    for (std::span<const std::byte> piece : pieces) write_all(fd.get(), piece, path);
    if (o.identity.exists && ::fchmod(fd.get(), o.permissions) != 0) io_failure(path, "cannot keep its permissions");
    // No fsync: this guards against a failed or interrupted writer, not a power cut, which would
    // cost a flush of every (possibly GiB) table written.
    if (::close(fd.release()) != 0) io_failure(path, "cannot write");
  } catch (...) {
    abandon();
    throw;
  }
}

void output_transaction::commit() {
  std::vector<state::output>& outputs = state_->outputs;
  std::size_t done = 0;
  try {
    // Every target again: any may have changed since it was declared.
    for (state::output& o : outputs) {
      state::resolve(o);
      state_->check_distinct(o);
    }
    for (; done < outputs.size(); ++done)
      if (!outputs[done].temporary.empty()) state::replace(outputs[done]);
  } catch (...) {
    std::string not_restored;
    for (std::size_t i = done; i-- > 0;) {
      const std::string failed = state::put_back(outputs[i]);
      if (!failed.empty()) not_restored += (not_restored.empty() ? "" : ", ") + failed;
    }
    state_->remove_temporaries();
    if (not_restored.empty()) throw;
    try {
      throw;
    } catch (const std::exception& e) {
      throw error(errc::io_error, std::string(e.what()) + "; could not restore " + not_restored);
    }
  }
  for (state::output& o : outputs)
    if (!o.backup.empty()) ::unlink(o.backup.c_str());
  outputs.clear();
}

}  // namespace embag::detail
