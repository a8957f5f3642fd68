"""What test modules share. A test module imports from here, never from another test
module or from a conftest.py, which keep only fixtures and hooks.

- clock: the one injectable test clock.
- objects: Kubernetes objects as sources report them. snapshots: model snapshots to
  program a data path with.
- datapaths: every data path the factory registers, built by name; the names kernel
  tests run on, and the parameters of the unit fixtures.
- golden: reading, running and rewriting the golden scenarios of tests/scenarios.
- labs: labs in network namespaces with a proxy in them (kernel tests). bench: running
  a benchmark module, its --plan and its --report-from. paths: where the repository is.
"""
