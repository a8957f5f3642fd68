"""Reading fields of Kubernetes objects: each reader checks one value and names the field
path in its error, so that a manifest file, an API watch and a test all reject the same
objects with the same message."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

IPAddress = IPv4Address | IPv6Address
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
# RFC 1035 / RFC 1123 labels, as Kubernetes validates names.
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")
# A manifest without metadata.namespace means the default namespace, as kubectl applies it;
# objects from the API always carry theirs.
DEFAULT_NAMESPACE = "default"


class ObjectError(ValueError):
    """An object that cannot be used, with the path of the field at fault."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


def printable(value: object) -> str:
    """value for a log line: hostile names must not forge lines or colour terminals."""
    text = value if isinstance(value, str) else repr(value)
    return ascii(text[:64])[1:-1] + ("..." if len(text) > 64 else "")


# --- field readers: each names the field path in its error ---------------------------


def read_mapping(value: object, path: str, required: bool = True) -> Mapping[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise ObjectError(path, f"must be a mapping, got {type(value).__name__}")
    return value


def read_list(value: object, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ObjectError(path, f"must be a list, got {type(value).__name__}")
    return value


def read_string(value: object, path: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise ObjectError(path, f"must be a string, got {type(value).__name__}")
    if pattern is not None and not pattern.match(value):
        raise ObjectError(path, f"{value[:80]!r} is not a valid name ({pattern.pattern})")
    return value


def read_port(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ObjectError(path, f"must be an integer port, got {value!r:.40}")
    if not 1 <= value <= 65535:
        raise ObjectError(path, f"{value} is out of range 1-65535")
    return value


def read_protocol(value: object, path: str) -> str:
    protocol = "TCP" if value is None else value
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:  # a list is unhashable
        raise ObjectError(path, f"{protocol!r:.40} is not one of TCP, UDP, SCTP")
    return str(protocol)


def read_ip(value: object, path: str) -> IPAddress:
    if not isinstance(value, str):
        raise ObjectError(path, f"must be an IP address string, got {type(value).__name__}")
    try:
        # The common case in C: a canonical dotted quad, which is exactly what
        # ipaddress accepts for IPv4. Anything else takes ipaddress's own parser.
        packed = socket.inet_pton(socket.AF_INET, value)
        if socket.inet_ntop(socket.AF_INET, packed) == value:
            return IPv4Address(packed)
    except (OSError, ValueError):  # not IPv4, or not even text inet_pton takes (a NUL)
        pass
    if "%" in value:
        # ipaddress takes an IPv6 zone ("fe80::1%eth0") of any text, spaces and newlines
        # included, and keeps it in str(): it would reach ipset's input. The API server
        # refuses zones; so do we.
        raise ObjectError(path, f"{value[:80]!r}: an IPv6 zone (%...) is not allowed")
    try:
        address = ip_address(value)
    except ValueError:
        raise ObjectError(path, f"{value[:80]!r} is not a valid IP address") from None
    if address.version == 6 and address.ipv4_mapped is not None:
        # As the API server's strict IP validation: never on the wire (RFC 4291 2.5.5.2),
        # and the compiled core holds IPv4 addresses so: one would pass for the other.
        raise ObjectError(
            path, f"{value[:80]!r} is an IPv4-mapped IPv6 address: write the IPv4 address"
        )
    return address


def read_bool(value: object, path: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ObjectError(path, f"must be true or false, got {value!r:.40}")
    return value


def read_metadata(obj: Mapping[str, Any], name_pattern: re.Pattern[str]) -> tuple[str, str]:
    meta = read_mapping(obj.get("metadata"), "metadata")
    name = read_string(meta.get("name"), "metadata.name", name_pattern)
    namespace = read_string(
        meta.get("namespace", DEFAULT_NAMESPACE), "metadata.namespace", DNS_1123_LABEL
    )
    labels = read_mapping(meta.get("labels"), "metadata.labels", required=False)
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ObjectError(f"metadata.labels[{key!r:.64}]", "labels must map strings to strings")
    return namespace, name
