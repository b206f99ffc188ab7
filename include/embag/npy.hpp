// NumPy .npy files: tables, indices, offsets and weights as every framework can dump them.
// Reading maps the file read-only (zero-copy; processes mapping the same file share its pages) or
// copies it when asked; writing goes to a temporary file renamed into place, so a failed write
// never leaves a truncated file. Errors are embag::error: errc::io_error (open, map, read, write,
// rename) or errc::bad_file (a malformed header, an unsupported dtype or order, a shape that
// overflows, data shorter than the header says), naming the file and what is wrong.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "embag/embag.hpp"

namespace embag {

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
// to `path` + a unique suffix, then renamed over `path`.
void write_npy(const std::string& path, npy_dtype type, std::span<const std::int64_t> shape, const void* data);

// Several files written all or none: stage() writes each to its temporary file (on error it removes
// every temporary file staged so far and throws), commit() renames them all into place. Destroyed
// without commit(), it removes its temporary files: a command whose last output fails leaves none.
class npy_write_group {
 public:
  npy_write_group();
  npy_write_group(const npy_write_group&) = delete;
  npy_write_group& operator=(const npy_write_group&) = delete;
  ~npy_write_group();

  void stage(const std::string& path, npy_dtype type, std::span<const std::int64_t> shape, const void* data);
  void commit();

 private:
  struct staged_file {
    std::string temporary, path;
  };
  std::vector<staged_file> staged_;
  void remove_staged() noexcept;
};

}  // namespace embag
