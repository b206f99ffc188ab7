/* Compiles the C header on its own as strict C99 (meson builds this with -Werror -Wpedantic). */
#include "embag/embag.h"

int main(void) {
  embag_options options;
  return embag_options_init(&options) == EMBAG_OK && embag_abi_version() == EMBAG_ABI_VERSION ? 0 : 1;
}
