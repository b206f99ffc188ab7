// NumPy .npy files (format versions 1.0 to 3.0): a strict parser of the header's dictionary, a
// read-only mapping or a copy of the data, and writes through a temporary file renamed into place.
#include "embag/npy.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>

#include "file_io.hpp"

namespace embag {
namespace {

// Files are little-endian; so are the CPUs embag targets (x86-64, AArch64), so little-endian data
// maps as it is.
static_assert(std::endian::native == std::endian::little, "embag reads .npy data in place on little-endian CPUs");

constexpr unsigned char npy_magic[] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
using detail::io_failure;
using detail::malformed;
using detail::owned_bytes;

// Header text quoted in an error message: printable ASCII kept, the rest escaped, so every
// message stays one printable line whatever bytes the file holds.
std::string quoted(std::string_view text) {
  constexpr std::size_t longest = 40;
  std::string out = "'";
  for (char c : text.substr(0, longest)) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f && c != '\\') {
      out += c;
    } else {
      constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[byte >> 4];
      out += hex[byte & 15];
    }
  }
  return out + (text.size() > longest ? "'..." : "'");
}

// A shape as Python writes it; in an error message (`longest` dimensions) a header of thousands of
// dimensions is cut, so that the message stays one readable line.
std::string shape_text(const std::vector<std::int64_t>& shape, std::size_t longest = SIZE_MAX) {
  std::string s = "(";
  for (std::size_t i = 0; i < std::min(shape.size(), longest); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() > longest) return s + ", ... " + std::to_string(shape.size()) + " dimensions)";
  return s + (shape.size() == 1 ? ",)" : ")");
}

std::string shape_in_message(const std::vector<std::int64_t>& shape) { return shape_text(shape, 8); }

std::int64_t element_bytes(npy_dtype type) {
  switch (type) {
    case npy_dtype::f16: return 2;
    case npy_dtype::f32:
    case npy_dtype::i32: return 4;
    case npy_dtype::i64: return 8;
  }
  return 1;
}

std::string_view little_endian_descr(npy_dtype type) {
  switch (type) {
    case npy_dtype::f32: return "<f4";
    case npy_dtype::i32: return "<i4";
    case npy_dtype::i64: return "<i8";
    case npy_dtype::f16: return "<f2";
  }
  return "?";
}

struct dtype_descr {
  npy_dtype type;
  bool big_endian;
};

std::optional<dtype_descr> dtype_from_descr(std::string_view descr) {
  // '|' (no byte order) is only for single-byte types, none of which embag reads
  if (descr.size() != 3 || (descr[0] != '<' && descr[0] != '>')) return std::nullopt;
  const bool big = descr[0] == '>';
  const std::string_view code = descr.substr(1);
  if (code == "f4") return dtype_descr{npy_dtype::f32, big};
  if (code == "f2") return dtype_descr{npy_dtype::f16, big};
  if (code == "i4") return dtype_descr{npy_dtype::i32, big};
  if (code == "i8") return dtype_descr{npy_dtype::i64, big};
  return std::nullopt;
}

// What the header says, checked against the file's size.
struct npy_layout {
  npy_dtype type = npy_dtype::f32;
  bool big_endian = false;
  std::vector<std::int64_t> shape;
  std::int64_t elements = 1;
  std::size_t data_offset = 0;
  std::size_t data_bytes = 0;
};

// The header is a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }.
// This reads exactly that grammar (strings without escapes, True/False, tuples of non-negative
// integers); anything else is an error rather than a guess.
class header_parser {
 public:
  header_parser(std::string_view text, const std::string& name) : text_(text), name_(name) {}

  npy_layout parse() {
    npy_layout layout;
    std::optional<std::string> descr;
    std::optional<bool> fortran_order;
    std::optional<std::vector<std::int64_t>> shape;
    skip_space();
    expect('{', "the header is not a dictionary: it does not start with '{'");
    for (;;) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = parse_string("a key");
      skip_space();
      expect(':', "expected ':' after the key " + quoted(key));
      skip_space();
      if (key == "descr") {
        if (descr) fail("the key 'descr' appears twice");
        descr = parse_string("the value of 'descr'");
      } else if (key == "fortran_order") {
        if (fortran_order) fail("the key 'fortran_order' appears twice");
        fortran_order = parse_bool();
      } else if (key == "shape") {
        if (shape) fail("the key 'shape' appears twice");
        shape = parse_shape();
      } else {
        fail("unexpected key " + quoted(key) + " in the header (a .npy header has 'descr', 'fortran_order', 'shape')");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != '}') fail_at("expected ',' or '}'");
    }
    ++pos_;
    skip_space();
    if (pos_ != text_.size()) fail_at("unexpected text after the header dictionary");
    if (!descr) fail("the header has no 'descr' key");
    if (!fortran_order) fail("the header has no 'fortran_order' key");
    if (!shape) fail("the header has no 'shape' key");

    const std::optional<dtype_descr> type = dtype_from_descr(*descr);
    if (!type)
      fail("unsupported dtype " + quoted(*descr) + " (embag reads <f4, <f2, <i4 and <i8, and their big-endian forms)");
    if (*fortran_order) fail("fortran_order is True: embag reads C-order arrays only (rows must be contiguous)");
    layout.type = type->type;
    layout.big_endian = type->big_endian;
    layout.shape = std::move(*shape);
    return layout;
  }

 private:
  std::string_view text_;
  const std::string& name_;
  std::size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& what) const { malformed(name_, "bad header: " + what); }
  [[noreturn]] void fail_at(const std::string& what) const {
    fail(what + " at header offset " + std::to_string(pos_) + ", found " +
         (pos_ < text_.size() ? quoted(text_.substr(pos_, 12)) : "the end"));
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }
  void expect(char c, const std::string& what) {
    if (peek() != c) fail_at(what);
    ++pos_;
  }

  std::string parse_string(const std::string& what) {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail_at("expected " + what + " as a quoted string");
    const std::size_t begin = ++pos_;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\') fail_at("escape sequences are not supported in header strings");
      if (text_[pos_] == '\n') fail_at("unterminated string");
      ++pos_;
    }
    if (pos_ == text_.size()) fail("unterminated string starting at header offset " + std::to_string(begin - 1));
    return std::string(text_.substr(begin, pos_++ - begin));
  }

  bool parse_bool() {
    for (const auto& [word, value] : {std::pair{std::string_view("True"), true}, std::pair{std::string_view("False"), false}}) {
      if (text_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        return value;
      }
    }
    fail_at("expected True or False for 'fortran_order'");
  }

  std::int64_t parse_dimension() {
    if (peek() == '-') fail_at("a negative dimension in 'shape'");
    if (peek() < '0' || peek() > '9') fail_at("expected a non-negative integer in 'shape'");
    std::int64_t value = 0;
    const std::size_t begin = pos_;
    while (peek() >= '0' && peek() <= '9') {
      if (__builtin_mul_overflow(value, std::int64_t{10}, &value) ||
          __builtin_add_overflow(value, std::int64_t{peek() - '0'}, &value))
        fail("the dimension starting at header offset " + std::to_string(begin) + " overflows 64 bits");
      ++pos_;
    }
    if (peek() == 'L') ++pos_;  // Python 2's long suffix, in files NumPy wrote under Python 2
    return value;
  }

  std::vector<std::int64_t> parse_shape() {
    expect('(', "expected a tuple for 'shape'");
    std::vector<std::int64_t> dims;
    bool trailing_comma = false;
    for (;;) {
      skip_space();
      if (peek() == ')') break;
      dims.push_back(parse_dimension());
      skip_space();
      trailing_comma = peek() == ',';
      if (trailing_comma) {
        ++pos_;
        continue;
      }
      if (peek() != ')') fail_at("expected ',' or ')' in 'shape'");
    }
    ++pos_;
    // (3) is the integer 3 in Python, not a tuple
    if (dims.size() == 1 && !trailing_comma) fail("'shape' is (" + std::to_string(dims[0]) + "), not a tuple");
    return dims;
  }
};

std::uint32_t read_little_endian(const unsigned char* p, int bytes) {
  std::uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

// Magic, version, header length, header, and the data's size against the file's.
npy_layout parse_npy(std::span<const std::byte> file, const std::string& name) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(file.data());
  const std::size_t size = file.size();
  const std::size_t magic_bytes = sizeof npy_magic;
  if (size > 0 && std::memcmp(bytes, npy_magic, std::min(size, magic_bytes)) != 0)
    malformed(name, "not a .npy file: it does not start with \\x93NUMPY");
  if (size < magic_bytes) malformed(name, "truncated: the file ends inside the \\x93NUMPY magic");
  if (size < magic_bytes + 2) malformed(name, "truncated: the file ends before the format version");
  const int major = bytes[6], minor = bytes[7];
  if (major < 1 || major > 3 || minor != 0)
    malformed(name, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                        " (embag reads 1.0, 2.0 and 3.0)");
  const int length_bytes = major == 1 ? 2 : 4;
  const std::size_t header_begin = magic_bytes + 2 + length_bytes;
  if (size < header_begin) malformed(name, "truncated: the file ends inside the header length");
  const std::size_t header_length = read_little_endian(bytes + 8, length_bytes);
  if (header_length > size - header_begin)
    malformed(name, "the header length " + std::to_string(header_length) + " runs past the end of the file (" +
                        std::to_string(size) + " bytes)");
  // Version 3.0 headers are UTF-8, 1.0 and 2.0 Latin-1: either way the keys, dtypes and numbers
  // embag accepts are ASCII, and any other byte fails the grammar.
  const std::string_view header(reinterpret_cast<const char*>(bytes + header_begin), header_length);
  npy_layout layout = header_parser(header, name).parse();

  const std::int64_t item = element_bytes(layout.type);
  std::int64_t total = 1;
  for (std::int64_t d : layout.shape)
    if (__builtin_mul_overflow(total, d, &total) || total > std::numeric_limits<std::int64_t>::max() / item)
      malformed(name, "the shape " + shape_in_message(layout.shape) + " holds more bytes than fit in 64 bits");
  layout.elements = total;
  layout.data_offset = header_begin + header_length;
  layout.data_bytes = static_cast<std::size_t>(total * item);
  const std::size_t available = size - layout.data_offset;
  const std::string descr(little_endian_descr(layout.type).substr(1));
  if (available < layout.data_bytes)
    malformed(name, "truncated data: the shape " + shape_in_message(layout.shape) + " of " + descr + " needs " +
                        std::to_string(layout.data_bytes) + " bytes, the file has " + std::to_string(available));
  if (available > layout.data_bytes)
    malformed(name, std::to_string(available - layout.data_bytes) + " bytes after the data the shape " +
                        shape_in_message(layout.shape) + " of " + descr + " needs");
  return layout;
}

void swap_bytes_in_place(std::byte* data, std::int64_t elements, npy_dtype type) {
  const std::int64_t width = element_bytes(type);
  for (std::int64_t i = 0; i < elements; ++i) std::reverse(data + width * i, data + width * (i + 1));
}

}  // namespace

struct npy_array::impl {
  std::string name;
  npy_layout layout;
  detail::file_mapping mapping;  // set when the data are read in place
  owned_bytes owned;     // set when they were copied
  const std::byte* data = nullptr;

  // The layout's data given the whole file in `owned`: moved to the start when the file's data
  // offset is not a multiple of the element size (a hand-made header: NumPy pads to 64 bytes),
  // and byte-swapped when big-endian.
  static std::unique_ptr<impl> from_owned_file(owned_bytes file, npy_layout layout, std::string name) {
    auto p = std::make_unique<impl>();
    std::byte* data = file.get() + layout.data_offset;
    if (layout.data_offset % element_bytes(layout.type) != 0) {
      std::memmove(file.get(), data, layout.data_bytes);
      data = file.get();
    }
    if (layout.big_endian) swap_bytes_in_place(data, layout.elements, layout.type);
    p->data = data;
    p->owned = std::move(file);
    p->layout = std::move(layout);
    p->name = std::move(name);
    return p;
  }
};

npy_array::npy_array(std::unique_ptr<impl> p) noexcept : impl_(std::move(p)) {}
npy_array::npy_array(npy_array&&) noexcept = default;
npy_array& npy_array::operator=(npy_array&&) noexcept = default;
npy_array::~npy_array() = default;

npy_array npy_array::from_bytes(std::span<const std::byte> file, const std::string& name) {
  npy_layout layout = parse_npy(file, name);
  owned_bytes copy = detail::allocate_bytes(file.size(), "a copy of " + name);
  std::memcpy(copy.get(), file.data(), file.size());
  return npy_array(impl::from_owned_file(std::move(copy), std::move(layout), name));
}

npy_array npy_array::open(const std::string& path, load how) {
  auto [fd, size] = detail::open_regular_file(path);
  if (how == load::copy || size == 0) {  // an empty file cannot be mapped; its parse fails below
    owned_bytes file = detail::read_whole_file(fd, size, path);
    npy_layout layout = parse_npy({file.get(), size}, path);
    return npy_array(impl::from_owned_file(std::move(file), std::move(layout), path));
  }
  detail::file_mapping mapping = detail::map_whole_file(fd, size, path);
  npy_layout layout = parse_npy(mapping.bytes(), path);
  if (layout.big_endian || layout.data_offset % element_bytes(layout.type) != 0) {
    // Converting or aligning the data means a copy: the file's own bytes are read-only.
    owned_bytes file = detail::allocate_bytes(size, "a converted copy of " + path);
    std::memcpy(file.get(), mapping.bytes().data(), size);
    return npy_array(impl::from_owned_file(std::move(file), std::move(layout), path));
  }
  if (layout.data_bytes >= detail::huge_page)  // advice only
    madvise(const_cast<std::byte*>(mapping.bytes().data()), size, MADV_HUGEPAGE);
  auto p = std::make_unique<impl>();
  p->data = mapping.bytes().data() + layout.data_offset;
  p->mapping = std::move(mapping);
  p->layout = std::move(layout);
  p->name = path;
  return npy_array(std::move(p));
}

npy_dtype npy_array::dtype() const noexcept { return impl_->layout.type; }
const std::vector<std::int64_t>& npy_array::shape() const noexcept { return impl_->layout.shape; }
std::int64_t npy_array::elements() const noexcept { return impl_->layout.elements; }
const void* npy_array::data() const noexcept { return impl_->data; }
bool npy_array::mapped() const noexcept { return impl_->owned == nullptr; }

namespace {

[[noreturn]] void wrong_kind(const std::string& name, const std::string& wanted, const npy_array& found) {
  malformed(name, "expected " + wanted + ", found a " + std::to_string(found.shape().size()) + "-D " + found.describe());
}

}  // namespace

std::string npy_array::describe() const {
  return std::string(little_endian_descr(dtype())) + " array of shape " + shape_in_message(shape());
}

table_view<const float> npy_array::as_table() const {
  const std::vector<std::int64_t>& shape = impl_->layout.shape;
  if (dtype() != npy_dtype::f32 || shape.size() != 2)
    wrong_kind(impl_->name, "a 2-D <f4 table", *this);
  if (shape[1] == 0)
    throw error(errc::invalid_shape, impl_->name + ": a table of shape " + shape_in_message(shape) +
                                         " has no columns (dim 0); a table needs dim > 0");
  return {reinterpret_cast<const float*>(impl_->data), shape[0], shape[1], shape[1]};
}

index_span npy_array::as_indices() const {
  if ((dtype() != npy_dtype::i32 && dtype() != npy_dtype::i64) || shape().size() != 1)
    wrong_kind(impl_->name, "a 1-D <i4 or <i8 array", *this);
  return {impl_->data, elements(), dtype() == npy_dtype::i32 ? index_type::i32 : index_type::i64};
}

std::span<const float> npy_array::as_floats() const {
  if (dtype() != npy_dtype::f32) wrong_kind(impl_->name, "a <f4 array", *this);
  return {reinterpret_cast<const float*>(impl_->data), static_cast<std::size_t>(elements())};
}

// ---------------------------------------------------------------------------------------------
// Writing.

namespace {

// The preamble and header NumPy would write: version 1.0 (2.0 when the header outgrows 16 bits),
// padded with spaces and a newline so the data start on a 64-byte boundary.
std::string npy_header(npy_dtype type, std::span<const std::int64_t> shape) {
  const std::string dict = "{'descr': '" + std::string(little_endian_descr(type)) + "', 'fortran_order': False, 'shape': " +
                           shape_text({shape.begin(), shape.end()}) + ", }";
  for (int major : {1, 2}) {
    const std::size_t preamble = sizeof npy_magic + 2 + (major == 1 ? 2 : 4);
    const std::size_t total = (preamble + dict.size() + 1 + detail::file_data_alignment - 1) / detail::file_data_alignment *
                              detail::file_data_alignment;
    const std::size_t header_length = total - preamble;
    if (major == 1 && header_length > 0xffff) continue;
    std::string out(reinterpret_cast<const char*>(npy_magic), sizeof npy_magic);
    out += static_cast<char>(major);
    out += '\0';
    for (int i = 0; i < (major == 1 ? 2 : 4); ++i) out += static_cast<char>((header_length >> (8 * i)) & 0xff);
    out += dict;
    out.append(total - out.size() - 1, ' ');
    out += '\n';
    return out;
  }
  throw error(errc::size_overflow, "a .npy header of " + std::to_string(dict.size()) + " bytes");
}

std::size_t checked_data_bytes(const std::string& path, npy_dtype type, std::span<const std::int64_t> shape,
                               const void* data) {
  std::int64_t total = element_bytes(type);
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0)
      throw error(errc::invalid_shape, path + ": shape[" + std::to_string(i) + "] = " + std::to_string(shape[i]) +
                                           " is negative");
    if (__builtin_mul_overflow(total, shape[i], &total))
      throw error(errc::size_overflow, path + ": the shape " + shape_in_message({shape.begin(), shape.end()}) +
                                           " holds more bytes than fit in 64 bits");
  }
  if (data == nullptr && total > 0) throw error(errc::null_pointer, path + ": data is null");
  return static_cast<std::size_t>(total);
}

}  // namespace

output_group::output_group() : files_(std::make_unique<detail::output_transaction>()) {}
output_group::output_group(output_group&&) noexcept = default;
output_group& output_group::operator=(output_group&&) noexcept = default;
output_group::~output_group() = default;

void output_group::reads(const std::string& path, const std::string& role) { files_->reads(path, role); }
void output_group::writes(const std::string& path, const std::string& role) { files_->writes(path, role); }

void output_group::stage(const std::string& path, npy_dtype type, std::span<const std::int64_t> shape,
                         const void* data) {
  try {
    const std::size_t data_bytes = checked_data_bytes(path, type, shape, data);
    const std::string header = npy_header(type, shape);
    files_->stage(path, {std::as_bytes(std::span(header)), {static_cast<const std::byte*>(data), data_bytes}});
  } catch (...) {
    files_->abandon();
    throw;
  }
}

void output_group::stage_bytes(const std::string& path, std::initializer_list<std::span<const std::byte>> pieces) {
  files_->stage(path, pieces);
}

void output_group::commit() { files_->commit(); }

void write_npy(const std::string& path, npy_dtype type, std::span<const std::int64_t> shape, const void* data) {
  output_group group;
  group.stage(path, type, shape, data);
  group.commit();
}

}  // namespace embag
