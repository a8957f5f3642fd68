"""Every default comes from nfqproxy.defaults: the CLI, ProxyConfig, the data paths and the
docs must all say the same."""

from __future__ import annotations

import dataclasses
import inspect

from nfqproxy import defaults
from nfqproxy.cli import build_parser
from nfqproxy.controller import ProxyConfig
from nfqproxy.datapath import factory
from nfqproxy.datapath.flows import Timeouts
from nfqproxy.datapath.reference.conntable import ConnectionTable
from nfqproxy.datapath.reference.datapath import ReferenceDatapath
from tests.helpers.paths import ROOT


def test_the_command_line_takes_its_defaults_from_the_defaults_module() -> None:
    args = build_parser().parse_args(["run"])
    assert args.queue_num == defaults.QUEUE_NUM
    assert args.flow_capacity == defaults.FLOW_CAPACITY
    assert args.min_sync_period == defaults.MIN_SYNC_PERIOD
    assert args.sync_period == defaults.SYNC_PERIOD
    assert args.healthz_bind_address == defaults.bind_text(defaults.HEALTHZ_BIND)
    assert args.metrics_bind_address == defaults.bind_text(defaults.METRICS_BIND)
    assert args.iptables == defaults.IPTABLES
    assert args.datapath == factory.default_datapath()


def test_the_proxy_config_and_the_data_paths_have_the_same_defaults() -> None:
    config = ProxyConfig()
    assert config.service_cidrs == defaults.SERVICE_CIDRS
    assert config.queue_num == defaults.QUEUE_NUM
    assert config.flow_capacity == defaults.FLOW_CAPACITY
    assert (config.min_sync_period, config.sync_period) == (
        defaults.MIN_SYNC_PERIOD,
        defaults.SYNC_PERIOD,
    )
    assert (config.healthz_bind, config.metrics_bind) == (
        defaults.HEALTHZ_BIND,
        defaults.METRICS_BIND,
    )
    assert config.datapath == factory.default_datapath()
    for constructor in (ReferenceDatapath, ConnectionTable):
        capacity = inspect.signature(constructor).parameters["capacity"].default
        assert capacity == defaults.FLOW_CAPACITY, constructor
    assert factory.DatapathSettings(defaults.SERVICE_CIDRS).flow_capacity == defaults.FLOW_CAPACITY


def test_the_docs_state_the_same_defaults() -> None:
    readme = (ROOT / "README.md").read_text()
    design = (ROOT / "docs" / "design.md").read_text()
    assert f"`--flow-capacity` (default {defaults.FLOW_CAPACITY};" in readme
    assert f"`--queue-num` (default {defaults.QUEUE_NUM});" in readme
    assert f"`--min-sync-period` apart (default {defaults.MIN_SYNC_PERIOD:g} s)" in readme
    assert f"`--sync-period` ({defaults.SYNC_PERIOD:g} s)" in readme
    assert f"on {defaults.bind_text(defaults.HEALTHZ_BIND)} answer" in readme
    assert f"`/metrics` on {defaults.bind_text(defaults.METRICS_BIND)}" in readme
    assert f"The default capacity is {defaults.FLOW_CAPACITY:,} flows" in design
    assert "../" not in design, "docs/design.md links to a file outside the repository"


TIMEOUT_ROWS = {
    "TCP SYN sent": "tcp_syn_sent",
    "TCP established": "tcp_established",
    "TCP closing (FIN seen)": "tcp_closing",
    "TCP reset": "tcp_reset",
    "UDP, no reply yet": "udp_unreplied",
    "UDP, replied": "udp_replied",
    "TCP, its backend left the service": "tcp_backend_gone",
}


def test_the_design_notes_list_every_flow_timeout_as_the_code_has_it() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    timeouts = Timeouts()
    assert set(TIMEOUT_ROWS.values()) == {f.name for f in dataclasses.fields(Timeouts)}
    for label, name in TIMEOUT_ROWS.items():
        seconds = getattr(timeouts, name)
        shown = f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"
        assert f"| {label} | {shown}" in design, (label, shown)
