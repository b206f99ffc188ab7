// Where a compressed_table's rows live: memory it owns (quantize, a copied file) or a mapped file.
// Shared by the table class (src/quantize.cpp) and the .embag reader (embag_file.cpp).
#pragma once

#include "embag/quantize.hpp"
#include "file_io.hpp"

namespace embag {

struct compressed_table::impl {
  compressed_table_view view;
  detail::owned_bytes owned;      // set when the rows are in memory the table owns
  detail::file_mapping mapping;   // set when they are a mapped file's
};

}  // namespace embag
