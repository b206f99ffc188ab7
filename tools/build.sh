#!/usr/bin/env bash
# Installs what is missing on Debian 12 (as root; otherwise prints the apt-get line and stops),
# then configures (release, the first time) and builds embag into build/.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(g++ pkg-config meson ninja-build libxsimd-dev libtbb-dev libgtest-dev libbenchmark-dev libcli11-dev
  nlohmann-json3-dev python3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  line="apt-get install -y --no-install-recommends ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "embag: missing Debian packages; as root run: apt-get update && $line" >&2
    exit 1
  fi
  echo "embag: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -f build/build.ninja ] || meson setup build --buildtype=release
meson compile -C build
