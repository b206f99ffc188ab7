// Compiles embag/npy.hpp on its own, with warnings as errors (linked into header_alone).
#include "embag/npy.hpp"
