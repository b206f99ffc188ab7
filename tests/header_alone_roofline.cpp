// Compiles embag/roofline.hpp on its own, with warnings as errors (linked into header_alone).
#include "embag/roofline.hpp"
