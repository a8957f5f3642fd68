"""nfqproxy against kube-proxy's iptables and nftables modes as the cluster grows.

    python -m bench [--quick | --full] [--rounds R] [--changes K] [--seconds S]
                    [--sizes N ...] [--modes M ...] [--out results]
    python -m bench --plan [options]: what those options would run, as JSON
    python -m bench --report-from results/<run>/results.json: its report and plots again

For each N in {100, 1000, 10000} (--full adds 30000; --quick runs 100 and 1000), a fresh
namespace lab gets N ClusterIP services of 3 endpoints each, plus an iperf3 service and
one service without endpoints. Each mode programs them in turn, in one run, round after
round (5 by default), and round r starts with mode r mod M, so that the order rotates:
- iptables-legacy, iptables-nft: kube-proxy's exact iptables layout
  (src/nfqproxy_lab/kube_proxy_rules.py), loaded with iptables-restore on that back end;
- nftables: kube-proxy's nftables mode layout, loaded with nft -f, where nft and the
  kernel take it;
- queue-floor: the iptables layout (legacy) plus one NFQUEUE round trip for each
  connection's first packet, accepted without a decision by bench/nfq_ceiling.c (one
  queue and process per CPU): the floor of any design that decides first packets in
  userspace, offload's included; packet measures only;
- fast: nfqproxy --datapath fast; offload-1q, offload-nq: nfqproxy --datapath offload
  with 1 queue and with one per CPU (left out, with the reason, where this nfqproxy has
  no offload path); all following the in-process API server with --min-sync-period 0;
- fast-sync-1s, offload-1q-sync-1s: the same at the default --min-sync-period (1 s), at
  the run's largest N, for the programming measures (the packet path is the same);
- reference: nfqproxy --datapath reference, N <= 1000, only when --modes names it.

Measures, for each mode and N (all traffic inside the lab: client -> node -> backends):
- connect latency: TCP connect() times, p50 and p99, to the first, the middle and the
  last service in iptables order (iptables' best, average and worst case), by
  bench/tcpbench.c;
- new connections per second: 4 client threads of connect, one request, its answer,
  close; for nfqproxy, the packets its queue decided next to the connections made;
- at N = 1000, TCP throughput (iperf3, 1 stream) and 64-byte UDP delivered rate;
- programming: a full load of the N services, and start to ready (the API list
  included); one endpoint change, measured by traffic: from the change (the API update,
  or the restore's start) to the first connection accepted by the new endpoint, while a
  client keeps connecting (about 4,000 connections a second, well below what any mode
  carries);
- memory: the proxy's RSS, or for kube-proxy's rules the kernel's Slab + VmallocUsed
  growth.

The report gives medians over rounds with their spread, targets judged round by round (a
difference inside the spread is noise), the run's metadata, a progress line with the
time left while it runs, and the iptables and nftables first-packet latency against
KEP-3866's published figures. Results go to results/<time>-scale/: results.json,
report.md, and PNG plots.
"""
