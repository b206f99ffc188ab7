// The calls the tests make, drawn at random or written by hand, and checks of the buffers they
// write.
#pragma once

#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "embag/embag.hpp"
#include "fuzz/random_call.hpp"

namespace embag::test {

// The calls are the shared generator's (tools/fuzz/random_call.hpp), which the fuzzers draw from
// too: random_call(seed, limits) is a test's seeded random call.
using fuzz::call_case;
using fuzz::call_limits;
using fuzz::random_call;

// A call with its bags given as offsets and default options, on a normal table (seed 1), for
// hand-written tests.
call_case make_case(std::int64_t rows, std::int64_t dim, const std::vector<std::int64_t>& indices,
                    const std::vector<std::int64_t>& offsets);

// An output buffer (rows x stride) filled with a canary pattern, so unwritten cells are visible.
std::vector<float> canary_buffer(std::int64_t rows, std::int64_t stride);

// Bitwise equality (any NaN equal to any NaN) of two float buffers over the written cells (rows x dim of a stride), with the
// first difference reported.
::testing::AssertionResult same_bits(const std::vector<float>& expected, const std::vector<float>& actual,
                                     std::int64_t rows, std::int64_t dim, std::int64_t stride);

// Every cell outside the rows x dim block of a stride (the gaps, and anything past the last row)
// is bitwise what it was before the call.
::testing::AssertionResult gaps_untouched(const std::vector<float>& before, const std::vector<float>& after,
                                          std::int64_t rows, std::int64_t dim, std::int64_t stride);

}  // namespace embag::test
