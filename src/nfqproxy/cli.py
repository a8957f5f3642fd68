"""The `nfqproxy` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from types import ModuleType

from nfqproxy import config_file, defaults, flags
from nfqproxy.control import client as control_client
from nfqproxy.control.server import DEFAULT_SOCKET
from nfqproxy.controller import Proxy, ProxyConfig
from nfqproxy.datapath import factory
from nfqproxy.datapath.marks import MarkLayout
from nfqproxy.health import parse_bind_address
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


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
LOG_FORMATS = ["text", "json"]


def _version() -> str:
    try:
        return version("nfqproxy")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _logging_flags(parser: argparse.ArgumentParser, default: object) -> None:
    """--log-level and --log-format, before the command and after `run` (kube-proxy's
    place for them)."""
    parser.add_argument(
        "--log-level", default=default, choices=LOG_LEVELS, help="the least severe logged"
    )
    parser.add_argument(
        "--log-format", default=default, choices=LOG_FORMATS, help="text lines, or JSON objects"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nfqproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nfqproxy {_version()}")
    _logging_flags(parser, None)  # None: not given (INFO, text)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the proxy in this network namespace")
    run.add_argument(
        "--config",
        type=Path,
        help="a YAML file of settings: the flags' names without dashes as keys (flags win)",
    )
    _logging_flags(run, argparse.SUPPRESS)  # given after run: as given before it
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
        type=flags.service_cidrs,
        action="append",
        dest="service_cidrs",
        help="the ClusterIP range, or an IPv4 and an IPv6 range separated by a comma, as "
        "kube-apiserver's --service-cluster-ip-range (default "
        f"{', '.join(map(str, defaults.SERVICE_CIDRS))})",
    )
    run.add_argument(
        "--cluster-cidr",
        type=flags.cidr,
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
    run.add_argument(
        "--queue-num",
        type=flags.queue_num,
        default=defaults.QUEUE_NUM,
        help=f"the first NFQUEUE queue number (default {defaults.QUEUE_NUM})",
    )
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
        type=flags.positive_int,
        default=None,
        help="NFQUEUE queues from --queue-num on, one worker thread each (offload only; "
        "default: one per CPU for offload, 1 for the others)",
    )
    run.add_argument(
        "--mark-mask",
        type=flags.mark_layout,
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
        "--socket",
        default=str(DEFAULT_SOCKET),
        help="the inspection socket that `nfqproxy services|flows|explain` ask (root only; "
        f"default {DEFAULT_SOCKET}); empty to turn off",
    )
    run.add_argument(
        "--min-sync-period",
        type=flags.duration,
        default=defaults.MIN_SYNC_PERIOD,
        help="the least time between syncs, as 1s or 500ms (or seconds); changes in between "
        f"are coalesced (default {defaults.MIN_SYNC_PERIOD:g}s)",
    )
    run.add_argument(
        "--sync-period",
        type=flags.duration,
        default=defaults.SYNC_PERIOD,
        help="the most time between syncs (a periodic resync), as 30s or 1m "
        f"(default {defaults.SYNC_PERIOD:g}s)",
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
        "--metrics-per-service-port",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also count new and refused flows per service port in /metrics (a series per "
        "service port: off by default, for clusters of many services)",
    )
    run.add_argument(
        "--flow-capacity",
        type=flags.positive_int,
        default=defaults.FLOW_CAPACITY,
        help=f"flows tracked (default {defaults.FLOW_CAPACITY})",
    )
    run.add_argument(
        "--iptables",
        default=defaults.IPTABLES,
        choices=["auto", "iptables", "iptables-legacy", "iptables-nft"],
        help="the iptables back end for the hooks: auto (the default) takes the host's, as "
        "kube-proxy's image does (the kubelet's chains, else the one with more rules); "
        "iptables is whatever the iptables command is",
    )
    run.add_argument(
        "--fail-open",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="when the queue is full, let packets through unproxied instead of dropping them "
        "(fast path only; see docs/design.md for why this is off by default)",
    )
    run.add_argument(
        "--keep-hooks-on-exit",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="leave the hook rules in place on SIGTERM/SIGINT, so that the next process (a "
        "restart, an upgrade) takes over open connections; `nfqproxy cleanup` removes them",
    )

    cleanup = commands.add_parser("cleanup", help="remove rules a killed proxy left behind")
    cleanup.add_argument(
        "--iptables",
        choices=["iptables-legacy", "iptables-nft"],
        help="only this back end (default: both, whichever the killed proxy used)",
    )

    control_client.add_commands(commands)
    for plugin in command_plugins():
        plugin.add_commands(commands)
        for name in plugin.COMMANDS:  # its commands come back to it, without a second scan
            commands.choices[name].set_defaults(plugin_dispatch=plugin.dispatch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(arguments)
    if getattr(args, "config", None) is not None:
        args = _with_config_file(parser, arguments, args.config)
    _configure_logging(args.log_level or "INFO", args.log_format or "text")
    try:
        return _dispatch(args)
    except (OSError, RuntimeError, ValueError) as exc:
        log.error("%s", exc)
        return 1


def _with_config_file(
    parser: argparse.ArgumentParser, arguments: list[str], path: Path
) -> argparse.Namespace:
    """The command line again, with the config file's settings as the run command's
    defaults, but for the flags the command line gives: those win."""
    run = _subcommand(parser, "run")
    try:
        settings = config_file.load(path, run)
    except config_file.ConfigError as exc:
        parser.exit(2, f"nfqproxy: error: {exc}\n")
    given = config_file.given_on_command_line(parser, [run], arguments)
    run.set_defaults(**{dest: value for dest, value in settings.items() if dest not in given})
    return parser.parse_args(arguments)


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise AssertionError(f"no {name} command")


def _configure_logging(level: str, output: str) -> None:
    # As basicConfig does: nothing when the root logger has handlers already (a host
    # program, or pytest's capture), so that they keep theirs.
    logging.basicConfig(level=level, handlers=[log_handler(output)])


def log_handler(output: str) -> logging.Handler:
    """A handler to standard error writing text lines, or one JSON object a line."""
    handler = logging.StreamHandler()
    if output == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


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
            metrics_per_service_port=args.metrics_per_service_port,
            iptables=args.iptables,
            flow_capacity=args.flow_capacity,
            keep_hooks_on_exit=args.keep_hooks_on_exit,
            fail_open=args.fail_open,
            marks=args.mark_mask,
            queues=factory.queues_for(args.datapath, args.queues),
            cluster_cidrs=tuple(args.cluster_cidrs or ()),
            nodeport_addresses=nodeport_addresses,
            node_ips=node_ips,
            control_socket=Path(args.socket) if args.socket else None,
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
    if args.command in control_client.COMMANDS:
        try:
            return control_client.dispatch(args)
        except control_client.ControlError as exc:
            log.error("%s", exc)
            return 1
    if hasattr(args, "plugin_dispatch"):
        return int(args.plugin_dispatch(args))
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
