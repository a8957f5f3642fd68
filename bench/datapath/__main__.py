"""`python -m bench.datapath`: the data-path benchmark."""

from bench.datapath.cli import main

raise SystemExit(main())
