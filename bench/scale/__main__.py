"""`python -m bench.scale`: the same run as `python -m bench`."""

from bench.scale.cli import main

raise SystemExit(main())
