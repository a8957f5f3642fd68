"""nfqproxy against kube-proxy's iptables and nftables modes as the cluster grows.

    python -m bench [--quick | --full] [--rounds R] [--changes K] [--out results]
    python -m bench --plan [options]: what those options would run, as JSON

For each N in {100, 1000, 10000} (--full adds 30000; --quick runs 100 and 1000), a fresh
namespace lab gets N ClusterIP services of 3 endpoints each, plus an iperf3 service and
one service without endpoints. Each mode programs them in turn, in one run, round after
round:
- iptables-legacy, iptables-nft: kube-proxy's exact iptables layout
  (src/nfqproxy_lab/kube_proxy_rules.py), loaded with iptables-restore on that back end;
- nftables: kube-proxy's nftables mode layout, loaded with nft -f, where nft and the
  kernel take it;
- fast: nfqproxy --datapath fast, following the in-process API server (watch events);
- reference: nfqproxy --datapath reference, for N <= 1000 only.

Measures, for each mode and N (all traffic inside the lab: client -> node -> backends):
- connect latency: TCP connect() times, p50 and p99, to the first and to the last
  service in iptables order (the last is iptables' worst case), by bench/tcpbench.c;
- new connections per second: 2 client threads of connect and close;
- at N = 1000, TCP throughput (iperf3, 1 stream) and 64-byte UDP delivered rate;
- programming: a full load of the N services; and one endpoint change, measured by
  traffic: from the change (the API update, or iptables-restore's start) to the first
  connection accepted by the new endpoint, while a client keeps connecting (about
  4,000 connections a second, well below what any mode carries);
- memory: the proxy's RSS, or for kube-proxy's rules the kernel's Slab + VmallocUsed
  growth.

Results go to results/<time>-scale/: results.json, report.md, and PNG plots.
"""
