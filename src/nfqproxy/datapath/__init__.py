"""The packet path: parse, look up, rewrite, verdict.

The contract, shared by every implementation: verdicts (actions, the ordered table of
reasons, counter names), frontends (service ports as tables, change planning), flows
(states, timeouts, the TCP state machine), marks (how a verdict reaches the kernel),
maglev and hashing (backend selection, identical on every node), and interface (the
Datapath and QueueBinding protocols). factory turns `--datapath NAME` into both.

The implementations are siblings: reference/ (plain Python on NetfilterQueue, reading
headers at their RFC offsets, the executable specification; the tests build packets with
dpkt), fast/ (the same semantics in C, cext/) and offload/ (first packets only).
"""
