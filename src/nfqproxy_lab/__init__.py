"""What nfqproxy is tried with, apart from the proxy and left out of its image: the
network-namespace lab and the demo, an in-process Kubernetes API server for tests, packet
builders, floods and traffic generators, and kube-proxy's iptables and nftables rule
layouts for the benchmarks."""
