"""Prints pyproject.toml's pip requirements, one a line, for an install that needs them
apart: `make lint` installs every one but those built from C source (NetfilterQueue),
which need the system packages that only `make install` brings.

    python scripts/python-requirements.py [--extra NAME ...] [--without NAME ...]
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--without", action="append", default=[])
    args = parser.parse_args()
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in args.extra:
        requirements += project["optional-dependencies"][extra]
    left_out = {name.lower() for name in args.without}
    for requirement in requirements:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        if name.lower() not in left_out:
            print(requirement)


if __name__ == "__main__":
    main()
