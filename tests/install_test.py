#!/usr/bin/env python3
"""`meson install` of the current build into a temporary DESTDIR, then the consumers of
tests/consumer/ built the way a user would ($CC / $CXX, cc / c++ unless set, with
`pkg-config --cflags --libs embag`) and run against the installed shared library ($EXE_WRAPPER
before the program when set: qemu-user in a cross build). Also checks that the README's C example is
tests/consumer/example.c, word for word.

Then, when $EMBAG_PYTHON is set (the build has the Python package), imports embag from the installed
site-packages with that interpreter and makes one call.

Usage: install_test.py BUILD_DIR SOURCE_DIR [B_SANITIZE]"""
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile


def run(args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"install_test: {' '.join(map(str, args))} failed ({result.returncode}):\n"
                 f"{result.stdout}{result.stderr}")
    return result.stdout


def main():
    build_dir, source_dir = map(pathlib.Path, sys.argv[1:3])
    sanitize = sys.argv[3] if len(sys.argv) > 3 else "none"
    sanitizer_flags = [] if sanitize == "none" else [f"-fsanitize={sanitize}"]
    consumer = source_dir / "tests" / "consumer"

    example_c = (consumer / "example.c").read_text()
    if example_c not in (source_dir / "README.md").read_text():
        sys.exit("install_test: README.md's C example differs from tests/consumer/example.c")

    with tempfile.TemporaryDirectory(prefix="embag-install-") as tmp:
        root = pathlib.Path(tmp) / "root"
        run(["meson", "install", "-C", build_dir, "--no-rebuild", "--quiet", "--destdir", root])

        def installed(pattern):
            found = sorted(root.rglob(pattern))
            if not found:
                sys.exit(f"install_test: nothing matching {pattern} was installed under {root}")
            return found[0]

        for header in ("embag.hpp", "embag.h", "npy.hpp", "quantize.hpp", "roofline.hpp"):
            installed(f"include/embag/{header}")
        installed("libembag.a")
        shared = installed("libembag.so")
        installed("bin/embag")
        pc = installed("embag.pc")
        if "xsimd" in pc.read_text():
            sys.exit("install_test: embag.pc names xsimd, which only the build needs")

        env = dict(os.environ, PKG_CONFIG_PATH=str(pc.parent), PKG_CONFIG_SYSROOT_DIR=str(root))
        flags = run(["pkg-config", "--cflags", "--libs", "embag"], env=env).split()
        run_env = dict(os.environ, LD_LIBRARY_PATH=str(shared.parent))
        wrapper = shlex.split(os.environ.get("EXE_WRAPPER", ""))
        compilers = (("example.c", os.environ.get("CC", "cc"), "-std=c99"),
                     ("example.cpp", os.environ.get("CXX", "c++"), "-std=c++20"))
        for source, compiler, std in compilers:
            exe = pathlib.Path(tmp) / source.replace(".", "_")
            run(shlex.split(compiler) + [std, "-Wall", "-Wextra", "-Werror", consumer / source, "-o", exe] +
                sanitizer_flags + flags)
            output = run(wrapper + [exe], env=run_env)
            # the installed library, not the build tree's, answered: the dynamic loader's list of
            # what it loads (what ldd prints, and the loader of a foreign program prints it too)
            maps = run(wrapper + [exe], env=dict(run_env, LD_TRACE_LOADED_OBJECTS="1"))
            if str(shared.parent) not in maps:
                sys.exit(f"install_test: {source} did not load libembag from {shared.parent}:\n{maps}")
            print(f"{source}: {output.strip()}")

        # import embag from the installed site-packages with the interpreter meson built it for
        # ($EMBAG_PYTHON: set where the build has the package; not in sanitized or cross builds)
        python = os.environ.get("EMBAG_PYTHON")
        if python:
            package = installed("embag/__init__.py").parent
            extension = installed("embag/_embag.*.so")
            if extension.parent != package:
                sys.exit(f"install_test: the extension {extension} is not in the package {package}")
            output = run([python, "-c", "import embag, numpy as np; print(embag.__file__, embag.embedding_bag("
                          "np.array([1, 2]), np.eye(3, dtype=np.float32), np.array([0]), mode='sum'))"],
                         env=dict(run_env, PYTHONPATH=str(package.parent)), cwd=tmp)
            if not output.startswith(str(package)):
                sys.exit(f"install_test: import embag did not load the installed package {package}:\n{output}")
            print(f"python: {output.strip()}")
    print("install_test: installed headers, libraries, tool and embag.pc; C and C++ consumers built and ran")


if __name__ == "__main__":
    main()
