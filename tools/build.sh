#!/usr/bin/env bash
# Installs what is missing on Debian 12 (as root; otherwise prints the apt-get line and stops),
# then configures (release, the first time) and builds embag into build/.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install_missing.sh g++ pkg-config meson ninja-build libxsimd-dev libtbb-dev libgtest-dev libbenchmark-dev libcli11-dev \
  nlohmann-json3-dev libcpp-httplib-dev python3 pybind11-dev python3-dev python3-numpy python3-pytest libopenmpi-dev openmpi-bin
# embag.nn's EmbeddingBag is a C++ autograd node built against torch's C++ headers: where PyTorch
# is installed, they come with it. A build directory configured before they came is reconfigured,
# since meson remembers a dependency it did not find.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
if installed python3-torch && ! installed libtorch-dev; then
  tools/install_missing.sh libtorch-dev
  [ -f build/build.ninja ] && meson setup --reconfigure build
fi

[ -f build/build.ninja ] || meson setup build --buildtype=release
meson compile -C build
