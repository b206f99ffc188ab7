#!/usr/bin/env bash
# The sanitizer lanes (run by .ci/run after the README's test command, which installs the tools):
#   tools/sanitize.sh address   every test suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   tools/sanitize.sh thread    the concurrency tests under ThreadSanitizer
# Each lane has its own build directory (build-asan, build-tsan) and leaves meson's JUnit log there.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  address)
    # UBSan only reports and goes on unless told not to recover. -g1: line tables for the reports,
    # without the full debug information of every kernel instantiation (which slows the build).
    # -O1, as AddressSanitizer's documentation advises: the instrumented kernel sources took 4.4x
    # their release build's time at -O2, 2.8x at -O1 (CI's time limit; tools/sanitize.sh's note
    # in the README)
    # The kernel libraries of the ISAs this CPU runs, as the release build's `embag info` lists
    # them (all of them without one): a sanitizer checks code only as it runs, and the avx512
    # kernels, the longest sanitized compile (1,356 s of CPU against 761 for sse2 and for avx2),
    # never run on a CPU without AVX-512
    isas=$(build/tools/embag info 2>/dev/null | sed -n 's/^isas available: *//p' | tr ' ' '\n' | grep -vx reference | paste -sd, - || true)
    [ -f build-asan/build.ninja ] || meson setup build-asan -Doptimization=1 -Ddebug=false -Db_lundef=false \
      -Db_sanitize=address,undefined -Dcpp_args='-fno-sanitize-recover=all -g1' ${isas:+-Disas=$isas}
    meson compile -C build-asan
    # fewer random cases per ISA than the release run: the sanitizers make each one ~10x slower
    EMBAG_TEST_CASES=300 meson test -C build-asan --no-rebuild --print-errorlogs
    ;;
  thread)
    # One kernel library (the x86-64 baseline's, sse2; AArch64 builds its only one, neon): races
    # live in the threading around the kernels, the same whichever ISA runs, and each kernel
    # library more is minutes of CI's time under TSan
    [ -f build-tsan/build.ninja ] || meson setup build-tsan --buildtype=debugoptimized -Db_lundef=false \
      -Db_sanitize=thread -Dcpp_args=-g1 -Disas=sse2,neon
    meson compile -C build-tsan tests/threads_test tests/stress_test
    # the stress test, and the threads suite's concurrency tests (its large determinism cases take
    # hours under TSan); history_size: TBB worker stacks restored, so tests/tsan.supp matches them
    TSAN_OPTIONS="halt_on_error=1 history_size=7 suppressions=$PWD/tests/tsan.supp" \
      meson test -C build-tsan --no-rebuild --print-errorlogs threads stress \
      --test-args='--gtest_filter=Stress.*:Concurrency.*'
    ;;
  *)
    echo "usage: tools/sanitize.sh address|thread" >&2
    exit 2
    ;;
esac
