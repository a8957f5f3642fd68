"""Builds the Cython extensions in cext/ as modules of the nfqproxy package.

Every cext/NAME.pyx becomes nfqproxy._NAME. Set NFQPROXY_NO_EXTENSIONS=1 to skip them:
the pure-Python reference path then serves alone.
"""

import os
from pathlib import Path

from setuptools import Extension, setup


# C libraries each extension links against (Debian: libnetfilter-queue-dev, libmnl-dev).
LIBRARIES = {"fastpath": ["netfilter_queue", "mnl"]}


def cython_extensions() -> list[Extension]:
    if os.environ.get("NFQPROXY_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    debug = os.environ.get("NFQPROXY_DEBUG_BUILD") == "1"
    extensions = [
        Extension(
            f"nfqproxy._{pyx.stem}",
            [str(pyx)],
            libraries=LIBRARIES.get(pyx.stem, []),
            extra_compile_args=["-O0", "-g"] if debug else ["-O3"],
        )
        for pyx in sorted(Path("cext").glob("*.pyx"))
    ]
    return cythonize(
        extensions,
        include_path=["cext"],
        language_level=3,
        compiler_directives={"boundscheck": debug, "wraparound": False},
    )


setup(ext_modules=cython_extensions())
