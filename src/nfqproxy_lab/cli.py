"""`nfqproxy lab ...` and `nfqproxy demo`: the lab's commands, added to the proxy's command
line through the "nfqproxy.commands" entry point when the lab is installed (a source
checkout; not the DaemonSet image)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from types import FrameType
from typing import Any

COMMANDS = ("lab", "demo")


def add_commands(commands: Any) -> None:
    """Adds the lab's subcommands to the `nfqproxy` parser's subparsers."""
    lab = commands.add_parser("lab", help="build or remove the network-namespace lab")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True)
    up = lab_commands.add_parser("up")
    up.add_argument("--name", default="nfqlab")
    up.add_argument("--backends", type=int, default=3)
    up.add_argument("--dual-stack", action="store_true", help="IPv6 addresses on every link too")
    down = lab_commands.add_parser("down")
    down.add_argument("--name", default="nfqlab")
    down.add_argument("--all", action="store_true", help="remove every lab")
    serve = lab_commands.add_parser("serve", help="(internal) a backend's HTTP and UDP servers")
    serve.add_argument("--name", required=True)
    serve.add_argument("--tcp-port", type=int, default=8080)
    serve.add_argument("--udp-port", type=int, default=5353)
    serve.add_argument("--ready-file", type=Path)

    demo = commands.add_parser(
        "demo", help="lab + proxy + traffic + an endpoint change, then teardown"
    )
    demo.add_argument("--backends", type=int, default=3)
    demo.add_argument("--requests", type=int, default=300)


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from nfqproxy_lab.demo import run_demo

        # Both end the demo through its teardown, as both stop the proxy cleanly. SIGINT is
        # set explicitly: a shell starts background commands with it ignored, and Python
        # then keeps it ignored.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _terminate_as_interrupt)
        return run_demo(args.backends, args.requests)
    from nfqproxy_lab.dualstack import SERVICE_CIDR6
    from nfqproxy_lab.topology import SERVICE_CIDR, Lab, all_labs

    if args.lab_command == "serve":
        from nfqproxy_lab.servers import serve

        serve(args.name, args.tcp_port, args.udp_port, args.ready_file)
        return 0
    if args.lab_command == "up":
        lab = Lab(args.name, args.backends, args.dual_stack)
        lab.up()
        print(f"lab {lab.name} is up: namespaces {', '.join(lab.state.namespaces)}")
        print(f"manifests: {lab.manifests_dir}")
        print(f"start the proxy: ip netns exec {lab.node_ns} nfqproxy run \\")
        print(f"  --manifests {lab.manifests_dir}", end="")
        if lab.dual_stack:
            print(f" \\\n  --service-cidr {SERVICE_CIDR},{SERVICE_CIDR6}", end="")
        print()
        return 0
    names = all_labs() if args.all else [args.name]
    for name in names:
        if name in all_labs():
            Lab.load(name).down()
            print(f"lab {name} removed")
        else:
            print(f"no lab named {name}")
    return 0
