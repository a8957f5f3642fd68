"""`python -m bench`: the scale benchmark (bench/scale/), nfqproxy against kube-proxy."""

from bench.scale.cli import main

raise SystemExit(main())
