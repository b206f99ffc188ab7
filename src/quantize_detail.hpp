// What quantize.cpp shares with the other entry points that take compressed tables.
#pragma once

#include <cstdint>

#include "embag/quantize.hpp"

namespace embag::detail {

// Every check of a compressed view (dtype, rows >= 0, dim > 0, stride >= row bytes, byte size in
// range, data non-null when it has rows), messages naming `name`; returns its row stride in bytes.
std::int64_t validate_compressed(const char* name, const compressed_table_view& table);

}  // namespace embag::detail
