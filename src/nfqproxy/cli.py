"""The `nfqproxy` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from ipaddress import IPv6Network, ip_network
from pathlib import Path
from types import ModuleType

from nfqproxy import defaults
from nfqproxy.controller import Proxy, ProxyConfig
from nfqproxy.datapath import factory
from nfqproxy.datapath.marks import MarkLayout, parse_mask
from nfqproxy.health import parse_bind_address
from nfqproxy.model import IPNetwork
from nfqproxy.node_addresses import parse_node_ips, parse_nodeport_addresses

log = logging.getLogger("nfqproxy")

# Packages that add subcommands declare a module in this entry-point group with
# COMMANDS, add_commands(subparsers) and dispatch(args): the lab does (`nfqproxy lab`,
# `nfqproxy demo`). The proxy itself never imports them.
COMMAND_PLUGINS = "nfqproxy.commands"


def command_plugins() -> list[ModuleType]:
    plugins = []
    for entry in entry_points(group=COMMAND_PLUGINS):
        try:
            plugins.append(entry.load())
        except ModuleNotFoundError as exc:
            # Declared, but its package left out of this build (the DaemonSet image). Any
            # other import failure is a bug in the plugin, and shows.
            if exc.name != entry.module.split(".")[0]:
                raise
    return plugins


V4_MAPPED = IPv6Network("::ffff:0:0/96")


def _network(text: str) -> IPNetwork:
    """A CIDR of either family; ValueError for a zone or the IPv4-mapped range."""
    if "%" in text:  # an IPv6 zone: any text, which str() keeps
        raise ValueError("an IPv6 zone (%...) is not allowed")
    network = ip_network(text, strict=True)
    if network.version == 6 and network.overlaps(V4_MAPPED):
        # Never on the wire (RFC 4291 2.5.5.2), and where the compiled core keeps IPv4.
        raise ValueError(f"it overlaps the IPv4-mapped range {V4_MAPPED}")
    return network


def _cidr(text: str) -> IPNetwork:
    try:
        return _network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _service_cidrs(text: str) -> tuple[IPNetwork, ...]:
    """kube-apiserver's --service-cluster-ip-range: one range, or an IPv4 and an IPv6 one
    separated by a comma (either order). The flag repeats for more ranges, as a cluster
    with extra ServiceCIDR objects has."""
    networks: list[IPNetwork] = []
    for part in text.split(","):
        try:
            networks.append(_network(part.strip()))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: {exc}") from None
    return tuple(networks)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def _mark_layout(text: str) -> MarkLayout:
    try:
        return parse_mask(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _queue_num(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"--queue-num must be 0-65535, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nfqproxy", description=__doc__)
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the proxy in this network namespace")
    run.add_argument(
        "--manifests",
        type=Path,
        help="a YAML file or folder of Service and EndpointSlice manifests "
        "(without it: the Kubernetes API)",
    )
    run.add_argument(
        "--api-server",
        help="the API server's URL (it cannot be the kubernetes "
        "Service's ClusterIP, which this proxy programs)",
    )
    run.add_argument("--kubeconfig", help="credentials; default: in-cluster")
    run.add_argument(
        "--node-zone",
        help="this node's zone, for topology hints (default: the Node's "
        "topology.kubernetes.io/zone label, when following the API)",
    )
    run.add_argument(
        "--service-proxy-name",
        default=None,
        help="serve only services labelled service.kubernetes.io/service-proxy-name=NAME",
    )
    run.add_argument(
        "--service-cidr",
        type=_service_cidrs,
        action="append",
        dest="service_cidrs",
        help="the ClusterIP range, or an IPv4 and an IPv6 range separated by a comma, as "
        "kube-apiserver's --service-cluster-ip-range (default "
        f"{', '.join(map(str, defaults.SERVICE_CIDRS))})",
    )
    run.add_argument(
        "--cluster-cidr",
        type=_cidr,
        action="append",
        dest="cluster_cidrs",
        help="the pods' range (repeatable, one per family), as kube-proxy's flag: sources "
        "inside are the cluster's own. ClusterIP traffic from outside it is masqueraded, and "
        "externalTrafficPolicy Local sends pods to every endpoint. Default: none",
    )
    run.add_argument(
        "--nodeport-addresses",
        action="append",
        help="CIDRs whose local addresses serve NodePorts, or 'primary' (the default, as "
        "kube-proxy's nftables mode): the node's primary address (--node-ip)",
    )
    run.add_argument(
        "--node-ip",
        action="append",
        help="the node's primary address, or one per family separated by a comma, for "
        "--nodeport-addresses primary (default: each family's default route's source "
        "address)",
    )
    run.add_argument("--queue-num", type=_queue_num, default=defaults.QUEUE_NUM)
    run.add_argument(
        "--datapath",
        choices=list(factory.DATAPATHS),
        default=factory.default_datapath(),
        help="fast (C: every packet in userspace; the default when built), offload (C: a "
        "flow's first packet in userspace, the rest in kernel conntrack) or reference "
        "(Python); NFQPROXY_NO_EXTENSIONS=1 makes reference the default",
    )
    run.add_argument(
        "--queues",
        type=_positive_int,
        default=None,
        help="NFQUEUE queues from --queue-num on, one worker thread each (offload only; "
        "default: one per CPU for offload, 1 for the others)",
    )
    run.add_argument(
        "--mark-mask",
        type=_mark_layout,
        default=MarkLayout(),
        help=f"the packet mark bits nfqproxy may use (default {defaults.MARK_MASK:#010x}); "
        "bits outside it are never touched (docs/design.md, Marks)",
    )
    run.add_argument(
        "--hostname-override",
        default=os.environ.get("NODE_NAME"),
        help="this node's name, for internalTrafficPolicy Local (default $NODE_NAME)",
    )
    run.add_argument("--status-file", type=Path, help="write status JSON here twice a second")
    run.add_argument(
        "--min-sync-period",
        type=float,
        default=defaults.MIN_SYNC_PERIOD,
        help="seconds between syncs at least; changes in between are coalesced",
    )
    run.add_argument(
        "--sync-period",
        type=float,
        default=defaults.SYNC_PERIOD,
        help="seconds between syncs at most (a periodic resync)",
    )
    run.add_argument(
        "--healthz-bind-address",
        default=defaults.bind_text(defaults.HEALTHZ_BIND),
        help="/healthz and /livez (JSON); empty to turn off",
    )
    run.add_argument(
        "--metrics-bind-address",
        default=defaults.bind_text(defaults.METRICS_BIND),
        help="/metrics (Prometheus); empty to turn off",
    )
    run.add_argument(
        "--flow-capacity",
        type=int,
        default=defaults.FLOW_CAPACITY,
        help=f"flows tracked (default {defaults.FLOW_CAPACITY})",
    )
    run.add_argument(
        "--iptables",
        default=defaults.IPTABLES,
        choices=["iptables", "iptables-legacy", "iptables-nft"],
    )
    run.add_argument(
        "--fail-open",
        action="store_true",
        help="when the queue is full, let packets through unproxied instead of dropping them "
        "(fast path only; see docs/design.md for why this is off by default)",
    )
    run.add_argument(
        "--keep-hooks-on-exit",
        action="store_true",
        help="leave the hook rules in place on SIGTERM/SIGINT, so that the next process (a "
        "restart, an upgrade) takes over open connections; `nfqproxy cleanup` removes them",
    )

    cleanup = commands.add_parser("cleanup", help="remove rules a killed proxy left behind")
    cleanup.add_argument(
        "--iptables",
        choices=["iptables-legacy", "iptables-nft"],
        help="only this back end (default: both, whichever the killed proxy used)",
    )

    for plugin in command_plugins():
        plugin.add_commands(commands)
        for name in plugin.COMMANDS:  # its commands come back to it, without a second scan
            commands.choices[name].set_defaults(plugin_dispatch=plugin.dispatch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return _dispatch(args)
    except (OSError, RuntimeError, ValueError) as exc:
        log.error("%s", exc)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        if args.datapath not in factory.available():
            log.error(
                "the %s data path is not available here (%s); available: %s",
                args.datapath,
                factory.unavailable_reason(args.datapath),
                ", ".join(factory.available()),
            )
            return 2
        if args.fail_open and not factory.DATAPATHS[args.datapath].fail_open:
            log.error("--fail-open is not supported by the %s data path", args.datapath)
            return 2
        try:
            nodeport_addresses = parse_nodeport_addresses(args.nodeport_addresses or [])
            node_ips = parse_node_ips(args.node_ip or [])
            given = [n for ranges in args.service_cidrs or [] for n in ranges]
            service_cidrs = tuple(dict.fromkeys(given)) or tuple(defaults.SERVICE_CIDRS)
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        for network in service_cidrs:
            if network.version not in factory.DATAPATHS[args.datapath].families:
                log.error(
                    "the %s data path does not serve IPv%d yet; --service-cidr %s needs "
                    "--datapath %s",
                    args.datapath,
                    network.version,
                    network,
                    " or ".join(factory.serving_family(network.version)),
                )
                return 2
        config = ProxyConfig(
            manifests=args.manifests,
            api_server=args.api_server,
            kubeconfig=args.kubeconfig,
            service_proxy_name=args.service_proxy_name,
            node_zone=args.node_zone,
            service_cidrs=service_cidrs,
            queue_num=args.queue_num,
            node_name=args.hostname_override,
            status_file=args.status_file,
            datapath=args.datapath,
            min_sync_period=args.min_sync_period,
            sync_period=args.sync_period,
            healthz_bind=parse_bind_address(args.healthz_bind_address, "--healthz-bind-address"),
            metrics_bind=parse_bind_address(args.metrics_bind_address, "--metrics-bind-address"),
            iptables=args.iptables,
            flow_capacity=args.flow_capacity,
            keep_hooks_on_exit=args.keep_hooks_on_exit,
            fail_open=args.fail_open,
            marks=args.mark_mask,
            queues=factory.queues_for(args.datapath, args.queues),
            cluster_cidrs=tuple(args.cluster_cidrs or ()),
            nodeport_addresses=nodeport_addresses,
            node_ips=node_ips,
        )
        import uvloop

        uvloop.run(Proxy(config).run())
        return 0
    if args.command == "cleanup":
        from nfqproxy.hooks import HookConfig, HookManager

        for command in [args.iptables] if args.iptables else ["iptables-nft", "iptables-legacy"]:
            removed = HookManager(HookConfig((), 0, command)).remove()
            print(f"{command}: removed {removed} nfqproxy jump rules and the NFQPROXY-* chains")
        return 0
    if hasattr(args, "plugin_dispatch"):
        return int(args.plugin_dispatch(args))
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
