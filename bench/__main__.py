"""`python -m bench`: the scale benchmark, nfqproxy against kube-proxy's iptables mode."""

from bench.scale import main

raise SystemExit(main())
