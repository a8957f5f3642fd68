"""`nfqproxy run --config FILE`: a YAML mapping whose keys are the run command's flags
without their dashes (`service-cidr: 10.96.0.0/12`, `min-sync-period: 1s`), as a
DaemonSet's ConfigMap holds them. Each value is read as the flag's own would be; a flag
on the command line wins over the file's key. An unknown key, or a bad value, is an
error that names the key."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

# Not keys: the file cannot name itself, and help is not a setting.
_NOT_KEYS = ("config", "help")


class ConfigError(ValueError):
    """A config file that cannot be read, or a key or value in it that is refused."""


def flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's long options by name without dashes: the keys a config file may use."""
    return {
        option[2:]: action
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
        and option[2:] not in _NOT_KEYS
        # A switch's --no- form is not a key of its own: `switch: false` says it.
        and not (isinstance(action, argparse.BooleanOptionalAction) and option[:5] == "--no-")
    }


def load(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's settings as {dest: value} for parser.set_defaults, each converted and
    checked by its flag's type and choices."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: must be a mapping of flag names to values, "
            f"got {type(data).__name__}"
        )
    actions = flag_actions(parser)
    values: dict[str, Any] = {}
    for key, value in data.items():
        action = actions.get(key) if isinstance(key, str) else None
        if action is None:
            close = difflib.get_close_matches(str(key), list(actions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"config file {path}: unknown key {str(key)[:80]!r}{hint}")
        values[action.dest] = _convert(action, value, f"config file {path}: {key}")
    return values


def _convert(action: argparse.Action, value: object, where: str) -> object:
    if action.nargs == 0:  # a switch: store_true
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r:.80}")
        return value
    if isinstance(action, argparse._AppendAction):  # a repeatable flag: one value or a list
        items: Sequence[object] = value if isinstance(value, list) else [value]
        return [_one(action, item, where) for item in items]
    return _one(action, value, where)


def _one(action: argparse.Action, value: object, where: str) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: expected a string or a number, got {value!r:.80}")
    if action.type is None and not isinstance(value, str):
        # YAML reads 0123 or 1.10 as numbers, whose text is not what was written.
        raise ConfigError(f"{where}: expected a string (quote it), got {value!r:.80}")
    text = str(value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: {text[:80]!r} is not one of {choices}")
    return converted


_UNSET = object()  # a default no command line sets: what was left at it was not given


def given_on_command_line(
    parser: argparse.ArgumentParser, parsers: Sequence[argparse.ArgumentParser], argv: Sequence[str]
) -> set[str]:
    """The dests the command line sets, in parser and the subcommand parsers given: parsed
    once with every default replaced by a marker (restored after). A repeatable flag
    appends to its default, so its marker is None: it was given if it holds a list."""
    actions = [
        a for p in (parser, *parsers) for a in p._actions if a.default is not argparse.SUPPRESS
    ]
    saved = [a.default for a in actions]
    try:
        for action in actions:
            action.default = None if isinstance(action, argparse._AppendAction) else _UNSET
        probe = parser.parse_args(argv)
    finally:
        for action, default in zip(actions, saved, strict=True):
            action.default = default
    unset = {a.dest for a in actions if isinstance(a, argparse._AppendAction)}
    return {
        dest
        for dest, value in vars(probe).items()
        if value is not _UNSET and not (dest in unset and value is None)
    }
