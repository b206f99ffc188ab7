#!/usr/bin/env python3
"""Checks the compiled library for the two ways per-ISA flags leak into baseline code.

1. ODR: a weak (inline/template) symbol defined in a kernel object and also in another object may
   be linked from the kernel copy, compiled with AVX-512 flags, into baseline code (SIGILL on an
   older CPU). Kernel objects must share no weak symbol with any other object.
2. On x86-64, objects other than the kernel sources isa_<name>.cpp (made from src/kernels/isa.cpp.in)
   must hold no VEX/EVEX instruction (ymm/zmm registers or v-prefixed SSE forms): the library has to
   run on any x86-64.
3. Every kernel object holds its software prefetches (L1 and L2 hints).

usage: check_objects.py CPU_FAMILY NM OBJDUMP libembag.a
(meson's host cpu family and its nm and objdump: a cross build's archive needs the cross tools)
"""
import re
import subprocess
import sys


# Per cpu family: a substring of every prefetch line (tested before the regular expression), the
# expression that captures the instruction, and what __builtin_prefetch(p, 0, 3) and (p, 0, 1) become.
PREFETCHES = {
    "x86_64": ("prefetcht", re.compile(r"\t(prefetcht[012])"), {"prefetcht0", "prefetcht2"}),
    "aarch64": ("prfm", re.compile(r"\tprfm\t(pldl[123]keep)"), {"pldl1keep", "pldl3keep"}),
}


def members(nm, archive):
    """{member name: nm lines} for each object in the archive."""
    out = subprocess.run([nm, "--defined-only", archive], check=True, capture_output=True, text=True).stdout
    result, current = {}, None
    for line in out.splitlines():
        if line.endswith(":") and line.strip():
            current = line[:-1]
            result[current] = []
        elif current and line.strip():
            result[current].append(line.split())
    return result


def main(cpu_family, nm, objdump, archive):
    objects = members(nm, archive)
    kernels = {m for m in objects if re.search(r"isa_\w+\.cpp\.o$", m)}
    if not kernels:
        print(f"no kernel objects found in {archive}: {sorted(objects)}")
        return 1
    defined = {m: {parts[-1] for parts in lines if len(parts) >= 2} for m, lines in objects.items()}
    failures = 0
    for k in sorted(kernels):
        # DW.ref.* are the exception-personality pointers every C++ object carries: data, not code
        weak = {parts[-1] for parts in objects[k]
                if len(parts) >= 3 and parts[1] in ("W", "V", "u") and not parts[-1].startswith("DW.ref.")}
        for other, symbols in defined.items():
            if other == k:
                continue
            shared = weak & symbols
            for s in sorted(shared)[:10]:
                print(f"ODR: weak symbol {s} is defined in {k} and in {other}")
            failures += len(shared)
    if cpu_family in PREFETCHES:
        prefetch_substring, prefetch, expected = PREFETCHES[cpu_family]
        vex = re.compile(r"%[yz]mm\d|\tv[a-z0-9]+\s")
        baseline = sorted(set(objects) - kernels)
        # Streamed, with a substring test before any regular expression: a sanitized build's
        # archive disassembles to tens of millions of lines, nearly all of them kernel code.
        dump = subprocess.Popen([objdump, "-d", "--no-show-raw-insn", archive], stdout=subprocess.PIPE,
                                text=True, bufsize=1 << 20)
        current, in_kernel = None, False
        prefetches = {k: set() for k in kernels}
        for line in dump.stdout:
            if "file format" in line:
                m = re.match(r"^(\S+\.o):\s+file format", line)
                if m:
                    current = m.group(1)
                    in_kernel = current in kernels
            elif in_kernel:
                if prefetch_substring in line:
                    p = prefetch.search(line)
                    if p:
                        prefetches[current].add(p.group(1))
            elif cpu_family == "x86_64" and current in baseline and vex.search(line):
                print(f"ISA leak: {current}: {line.strip()}")
                failures += 1
                if failures > 20:
                    break
        else:  # read to its end: objdump must have succeeded
            if dump.wait() != 0:
                print(f"objdump -d {archive} failed")
                failures += 1
        dump.stdout.close()
        dump.kill()
        dump.wait()
        # GCC 12 once deleted every prefetch as a side-effect-free call: each kernel must keep both.
        for k, found in sorted(prefetches.items()):
            if found != expected:
                print(f"prefetch lost: {k} has {sorted(found) or 'no prefetch instructions'}")
                failures += 1
    print(f"{len(kernels)} kernel objects, {len(objects) - len(kernels)} baseline objects: "
          f"{'OK' if failures == 0 else str(failures) + ' problems'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
