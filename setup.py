"""Builds the Cython extensions in cext/ as modules of the nfqproxy package.

Every cext/NAME.pyx becomes nfqproxy._NAME. Set NFQPROXY_NO_EXTENSIONS=1 to skip them:
the pure-Python reference path then serves alone. NFQPROXY_RUNTIME_ONLY=1 leaves out
the lab package (nfqproxy_lab: the network-namespace lab, the demo, the test API server
and packet builders), as the DaemonSet image does. NFQPROXY_DEBUG_BUILD=1 builds with -O1 -g
and bounds checks; NFQPROXY_ASAN_BUILD=1 adds AddressSanitizer (see `make asan`).
"""

import os
from pathlib import Path

from setuptools import Extension, find_packages, setup


# C libraries each extension links against (Debian: libnetfilter-queue-dev, libmnl-dev).
LIBRARIES = {"fastpath": ["netfilter_queue", "mnl"]}


def cython_extensions() -> list[Extension]:
    if os.environ.get("NFQPROXY_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    asan = os.environ.get("NFQPROXY_ASAN_BUILD") == "1"
    debug = asan or os.environ.get("NFQPROXY_DEBUG_BUILD") == "1"
    sanitize = ["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else []
    extensions = [
        Extension(
            f"nfqproxy._{pyx.stem}",
            [str(pyx)],
            libraries=LIBRARIES.get(pyx.stem, []),
            extra_compile_args=(["-O1", "-g"] if debug else ["-O3"]) + sanitize,
            extra_link_args=sanitize,
        )
        for pyx in sorted(Path("cext").glob("*.pyx"))
    ]
    # cext/includes/ and cext/fastpath/ hold parts, not modules (cext/README.md): they are
    # cimported or included from the include path, and cythonize rebuilds a module when
    # one of its parts changes.
    return cythonize(
        extensions,
        include_path=["cext"],
        language_level=3,
        compiler_directives={"boundscheck": debug, "wraparound": False},
    )


def packages() -> list[str]:
    runtime_only = os.environ.get("NFQPROXY_RUNTIME_ONLY") == "1"
    excluded = ["nfqproxy_lab", "nfqproxy_lab.*"] if runtime_only else []
    return find_packages(str(Path(__file__).resolve().parent / "src"), exclude=excluded)


if __name__ == "__main__":
    setup(ext_modules=cython_extensions(), packages=packages(), package_dir={"": "src"})
