// Compiles embag/optim.hpp on its own, with warnings as errors (linked into header_alone).
#include "embag/optim.hpp"
