"""Data-path benchmark: kernel DNAT in kube-proxy's iptables and nftables layouts, the
NFQUEUE ceiling, and nfqproxy's data paths, side by side in one run.

    python -m bench.datapath [--quick] [--rounds R] [--seconds S] [--modes M ...] [--out results]
    python -m bench.datapath --plan [options]: what those options would run, as JSON
    python -m bench.datapath --report-from results/<run>/results.json: its report again

Modes, each served to one VIP (TCP and UDP for iperf3, TCP for short connections):
- kernel:       iptables DNAT in kube-proxy's iptables layout (src/nfqproxy_lab/kube_proxy_rules.py)
- nftables:     kube-proxy's nftables layout (verdict maps, numgen), where nft and the kernel
                take it
- ceiling:      the kernel layout plus an NFQUEUE hop both ways, answered by bench/nfq_ceiling.c,
                an accept-all loop with F_GSO and batch verdicts: the most NFQUEUE carries here
- ceiling-copy: the same, copying whole packets out and handing each back with its verdict, as
                any rewriter must: the most a proxy that rewrites on NFQUEUE can carry
- fast:         nfqproxy --datapath fast
- offload-1q:   nfqproxy --datapath offload --queues 1: only a flow's first packet is queued
- offload-nq:   nfqproxy --datapath offload --queues <CPUs>
- reference:    nfqproxy --datapath reference: slow by design, run only when --modes names it
A mode this machine cannot run (an nfqproxy without the offload path, a kernel that refuses
the nftables layout) is left out, and the report says why.

Rounds: every round (5 by default) runs each mode once, each in a fresh namespace lab
(client -> VIP -> node -> backend), and round r starts with mode r mod M, so that the order
rotates. Cells are medians over rounds with their min and max; ratios are taken round by
round; a difference inside the spread is called noise.

Measures: TCP throughput (iperf3, 1 and 4 streams); 64-byte UDP delivered rate and loss
(iperf3 -u -l 64 -b 0); new connections per second (bench/tcpbench.c requests: 4 client
threads of connect, one request, its answer, close), with the packets the proxy's queue
decided meanwhile next to the connections made; nfqproxy's RSS and start-to-ready time;
bytes per tracked flow of every data path this nfqproxy has (RSS growth over 1M first
packets, 200k for the reference); Maglev table build time (M = 65537, 100 backends).
Metadata (CPU, cores, kernel, iptables, nft, git commit) heads the report.

Output: results/<time>-datapath/: results.json, report.md, datapath.png.
"""
