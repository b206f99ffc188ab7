// The .embag file: a 48-byte header (magic, version, dtype code, rows, dim, row bytes, data
// offset), then the packed rows at a 64-byte aligned offset. Read mapped or copied, every field
// checked against the others and the file's size; written all or nothing (output_group).
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "allocation.hpp"
#include "formats/codecs.hpp"
#include "formats/table_storage.hpp"
#include "validate.hpp"

namespace embag {
namespace {

using detail::load;
using detail::malformed;
using detail::store;

std::string str(std::int64_t v) { return std::to_string(v); }

constexpr char embag_magic[8] = {'E', 'M', 'B', 'A', 'G', 'T', 'B', 'L'};
constexpr std::uint32_t embag_version = 1;
constexpr std::size_t embag_header_bytes = 48;

// The codes a file may name: "0 f32, 1 f16, ...".
std::string dtype_codes() {
  std::string codes;
  for (const dtype type : all_dtypes)
    codes += (codes.empty() ? "" : ", ") + str(static_cast<std::int64_t>(type)) + " " + std::string(to_string(type));
  return codes;
}

struct embag_layout {
  compressed_table_view view;  // data is the offset of the rows in the file
  std::size_t data_offset = 0;
};

// Every field checked against the others and against the file's size.
embag_layout parse_embag(std::span<const std::byte> file, const std::string& name) {
  const std::size_t size = file.size();
  if (std::memcmp(file.data(), embag_magic, std::min(size, sizeof embag_magic)) != 0)
    malformed(name, "not an .embag file: it does not start with EMBAGTBL");
  if (size < embag_header_bytes)
    malformed(name, "truncated: the file has " + str(std::int64_t(size)) + " bytes, the .embag header needs 48");
  const auto version = load<std::uint32_t>(file.data() + 8), type = load<std::uint32_t>(file.data() + 12);
  if (version != embag_version) malformed(name, "unsupported .embag version " + str(std::int64_t(version)) + " (embag reads 1)");
  const detail::format* format = type <= 0xff ? detail::format_of(static_cast<dtype>(type)) : nullptr;
  if (format == nullptr) malformed(name, "unknown dtype code " + str(std::int64_t(type)) + " (" + dtype_codes() + ")");
  std::int64_t fields[4];
  const char* names[4] = {"rows", "dim", "row bytes", "data offset"};
  for (int i = 0; i < 4; ++i) {
    const auto v = load<std::uint64_t>(file.data() + 16 + 8 * i);
    if (v > std::uint64_t(std::numeric_limits<std::int64_t>::max()))
      malformed(name, std::string(names[i]) + " = " + std::to_string(v) + " does not fit in 63 bits");
    fields[i] = static_cast<std::int64_t>(v);
  }
  const auto [rows, dim, stride, offset] = fields;
  const dtype element = format->type;
  if (dim == 0) malformed(name, "dim is 0");
  const std::optional<std::int64_t> bytes = detail::packed_row_bytes(*format, dim);
  if (!bytes) malformed(name, "a " + std::string(to_string(element)) + " row of dim " + str(dim) + " overflows the address space");
  if (stride != *bytes)
    malformed(name, "row bytes " + str(stride) + " do not match dtype " + std::string(to_string(element)) + " and dim " +
                        str(dim) + ", which need " + str(*bytes));
  if (offset < std::int64_t(embag_header_bytes) || offset % std::int64_t(detail::file_data_alignment) != 0)
    malformed(name, "data offset " + str(offset) + " is not a multiple of 64 at or after the 48-byte header");
  if (std::uint64_t(offset) > size)
    malformed(name, "data offset " + str(offset) + " is past the end of the file (" + str(std::int64_t(size)) + " bytes)");
  std::int64_t data_bytes = 0;
  if (__builtin_mul_overflow(rows, stride, &data_bytes))
    malformed(name, str(rows) + " rows of " + str(stride) + " bytes overflow 64 bits");
  const auto available = static_cast<std::int64_t>(size - std::size_t(offset));
  if (available < data_bytes)
    malformed(name, "truncated data: " + str(rows) + " rows of " + str(stride) + " bytes need " + str(data_bytes) +
                        " bytes, the file has " + str(available));
  if (available > data_bytes)
    malformed(name, str(available - data_bytes) + " bytes after the " + str(rows) + " rows of " + str(stride) + " bytes");
  return {{nullptr, rows, dim, stride, element}, std::size_t(offset)};
}

// The rows of a whole .embag file in owned memory, parsed and moved to the start of the block
// (64-byte aligned, the header dropped).
compressed_table_view rows_to_start(std::byte* file, std::size_t size, const std::string& name) {
  const embag_layout layout = parse_embag({file, size}, name);
  std::memmove(file, file + layout.data_offset, size - layout.data_offset);
  compressed_table_view view = layout.view;
  view.data = file;
  return view;
}

}  // namespace

compressed_table compressed_table::from_bytes(std::span<const std::byte> file, const std::string& name) {
  auto p = std::make_unique<impl>();
  p->owned = detail::allocate_bytes(file.size(), "a copy of " + name);
  if (!file.empty()) std::memcpy(p->owned.get(), file.data(), file.size());
  p->view = rows_to_start(p->owned.get(), file.size(), name);
  return compressed_table(std::move(p));
}

compressed_table compressed_table::open(const std::string& path, load how) {
  auto [fd, size] = detail::open_regular_file(path);
  auto p = std::make_unique<impl>();
  if (how == load::copy || size == 0) {  // an empty file cannot be mapped; its parse fails
    p->owned = detail::read_whole_file(fd, size, path);
    p->view = rows_to_start(p->owned.get(), size, path);
    return compressed_table(std::move(p));
  }
  p->mapping = detail::map_whole_file(fd, size, path);
  const std::span<const std::byte> file = p->mapping.bytes();
  const embag_layout layout = parse_embag(file, path);
  if (size - layout.data_offset >= detail::huge_page)  // advice only
    madvise(const_cast<std::byte*>(file.data()), size, MADV_HUGEPAGE);
  p->view = layout.view;
  p->view.data = file.data() + layout.data_offset;
  return compressed_table(std::move(p));
}

void stage_embag(output_group& outputs, const std::string& path, compressed_table_view table) {
  const std::int64_t stride = detail::validate_compressed(path.c_str(), table);
  const std::int64_t bytes = row_bytes(table.element_type, table.dim);
  std::array<std::byte, detail::file_data_alignment> header{};
  std::memcpy(header.data(), embag_magic, sizeof embag_magic);
  store(header.data() + 8, embag_version);
  store(header.data() + 12, std::uint32_t(table.element_type));
  const std::uint64_t fields[4] = {std::uint64_t(table.rows), std::uint64_t(table.dim), std::uint64_t(bytes),
                                   std::uint64_t(header.size())};
  for (int i = 0; i < 4; ++i) store(header.data() + 16 + 8 * i, fields[i]);
  const auto data_bytes = static_cast<std::size_t>(table.rows * bytes);
  if (stride == bytes) return outputs.stage_bytes(path, {header, {table.data, data_bytes}});
  // Padded rows are packed first: the file holds packed rows only.
  std::vector<std::byte> packed = detail::allocated<std::byte>(data_bytes, path + ": the packed rows");
  for (std::int64_t r = 0; r < table.rows; ++r)
    std::memcpy(packed.data() + r * bytes, table.data + r * stride, static_cast<std::size_t>(bytes));
  outputs.stage_bytes(path, {header, packed});
}

void write_embag(const std::string& path, compressed_table_view table) {
  output_group outputs;
  stage_embag(outputs, path, table);
  outputs.commit();
}

}  // namespace embag
