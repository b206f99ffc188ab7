#!/usr/bin/env bash
# The AArch64 lane: embag cross-built for NEON with Debian's g++-aarch64-linux-gnu
# (tools/aarch64-cross.ini) into build-aarch64/, and the whole test suite run there under
# qemu-user. Installs what is missing (as root; otherwise prints the commands to run and stops):
# the cross compiler, qemu and the arm64 (multiarch) packages of the libraries.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install_missing.sh g++-aarch64-linux-gnu qemu-user-static pkg-config meson ninja-build python3 libcli11-dev nlohmann-json3-dev \
  libxsimd-dev:arm64 libtbb-dev:arm64 libgtest-dev:arm64 libbenchmark-dev:arm64

[ -f build-aarch64/build.ninja ] || meson setup build-aarch64 --cross-file tools/aarch64-cross.ini
meson compile -C build-aarch64
# Fewer random cases than the native run's 2,000 per ISA: under qemu the differential suite's 2,000
# took 55 s. 800 keeps compressed_forward at 100 per dtype, where it checks that its draw met
# every mode. The bench suite's CLI test is left to the native run: under qemu it took 195 s of
# the lane's 516 s of tests (then in cli and cli_reference; the forced runs now skip it as every
# *EveryIsa* test), timing kernels whose results the differential and compressed suites already
# check here bit for bit.
EMBAG_TEST_CASES=800 GTEST_FILTER=-Cli.BenchSuiteOpensWithItsSummaryOnEveryIsa \
  meson test -C build-aarch64 --no-rebuild --print-errorlogs
