// Compiles embag/sharded.hpp on its own, with warnings as errors (linked into header_alone: it
// needs no MPI header).
#include "embag/sharded.hpp"
