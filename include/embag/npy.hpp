// NumPy .npy files: tables, indices, offsets and weights as every framework can dump them.
// Reading maps the file read-only (zero-copy; processes mapping the same file share its pages) or
// copies it when asked; writing goes to a temporary file renamed into place, so a failed write
// never leaves a truncated file. Errors are embag::error: errc::io_error (open, map, read, write,
// rename) or errc::bad_file (a malformed header, an unsupported dtype or order, a shape that
// overflows, data shorter than the header says), naming the file and what is wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "embag/embag.hpp"

namespace embag {

namespace detail {
class output_transaction;
}

// f16 is IEEE binary16 ('<f2'), held as raw 16-bit words: dequantize() reads them as a
// compressed_table_view of dtype::f16 (embag/quantize.hpp).
enum class npy_dtype : std::uint8_t { f32, i32, i64, f16 };

class npy_array {
 public:
  enum class load : std::uint8_t {
    map,   // mmap read-only, huge-page advice where the OS allows
    copy,  // read into memory the array owns (for files that may change underneath)
  };

  // Versions 1.0 to 3.0; little-endian <f4, <f2, <i4, <i8 (big-endian data is converted on load, which
  // copies); C order (Fortran order is rejected: the rows of a table must be contiguous).
  static npy_array open(const std::string& path, load how = load::map);
  // The same parse of a whole .npy file already in memory, copied; `name` is what errors call it.
  static npy_array from_bytes(std::span<const std::byte> file, const std::string& name);

  npy_array(npy_array&&) noexcept;
  npy_array& operator=(npy_array&&) noexcept;
  ~npy_array();

  npy_dtype dtype() const noexcept;
  const std::vector<std::int64_t>& shape() const noexcept;
  std::int64_t elements() const noexcept;  // product of the shape
  const void* data() const noexcept;
  bool mapped() const noexcept;  // false when the data were copied
  // "<i8 array of shape (4, 5)", as errors quote it (a shape of many dimensions cut short).
  std::string describe() const;

  // Typed views; each checks the dtype and rank (errc::bad_file naming the file otherwise).
  table_view<const float> as_table() const;  // 2-D f32
  index_span as_indices() const;             // 1-D i32 or i64
  std::span<const float> as_floats() const;  // f32 of any rank, flattened

 private:
  struct impl;
  explicit npy_array(std::unique_ptr<impl> p) noexcept;
  std::unique_ptr<impl> impl_;
};

// Writes a C-order little-endian array (format version 1.0, or 2.0 when the header needs it):
// to `path` + a unique suffix, then renamed over `path` (an output_group of one file: the same
// checks of the target). Replacing a mapped table's file this way is safe for its readers.
void write_npy(const std::string& path, npy_dtype type, std::span<const std::int64_t> shape, const void* data);

// The output files of one command, written all or none. Declare what the command reads (reads)
// and will write (writes) before computing, so a bad target fails before any work: an output that
// is not a regular file (a FIFO, a device, a directory), one in a missing or unwritable directory,
// or one that is the same file as another output or as an input (device and inode of existing
// files, the resolved path of new ones) is an errc::io_error naming it (and `role`, a flag say).
// stage() writes a file to a temporary beside its target (declaring it if it was not; on error
// every temporary staged so far is removed). commit() checks every target again, then renames
// them into place, keeping each replaced file aside until all succeeded: a failure midway puts
// back what was already replaced. A symbolic link is written through (the link stays, the file
// it names is replaced) and an existing target's permission bits are kept. Destroyed without
// commit(), the group removes its temporaries: a command that fails leaves no output changed.
class output_group {
 public:
  output_group();
  output_group(output_group&&) noexcept;
  output_group& operator=(output_group&&) noexcept;
  ~output_group();

  void reads(const std::string& path, const std::string& role = "");
  void writes(const std::string& path, const std::string& role = "");
  // A .npy file, as write_npy writes it.
  void stage(const std::string& path, npy_dtype type, std::span<const std::int64_t> shape, const void* data);
  // Any file: the pieces, in order (embag/quantize.hpp's stage_embag builds on it).
  void stage_bytes(const std::string& path, std::initializer_list<std::span<const std::byte>> pieces);
  void commit();

 private:
  std::unique_ptr<detail::output_transaction> files_;
};

}  // namespace embag
