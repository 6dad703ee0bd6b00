"""Settings declared once: one ``Setting`` yields the flag, the ``PODGATE_*`` variable, the
config-file key, the parsing and validation, and the help text.

Precedence, per setting: flag > ``PODGATE_*`` variable > config file > another program's variable
(``KUBECONFIG``, ``AWS_REGION``: ambient, so an explicit config file beats it) > default.

argparse only collects the flags' raw text (``default=None`` means "not given"); every value,
whatever its source, goes through the same ``Kind``, so a bad one is reported the same way: one
line naming the flag, the variable and what is accepted.  The environment and the config file are
read by ``resolve`` only, when the command that uses them runs, never while the parser is built.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from podgate.controller.settings import SettingsError

ENV_PREFIX = "PODGATE_"
CONFIG_FLAG = "--config"
CONFIG_ENV = ENV_PREFIX + "CONFIG"


@dataclass(frozen=True)
class Kind:
    """How a setting's text becomes its value; ``parse`` raises ValueError on anything outside
    ``accepts``, which the error message and the help both show."""

    accepts: str
    parse: Callable[[str], object]


def path(accepts: str) -> Kind:
    def parse(raw: str) -> Path:
        if not raw.strip():
            raise ValueError(raw)
        return Path(raw)

    return Kind(accepts, parse)


def pattern(accepts: str, regex: str) -> Kind:
    """Text that must match ``regex`` whole (names, regions, prefixes: a typo fails at start)."""
    compiled = re.compile(regex)

    def parse(raw: str) -> str:
        if not compiled.fullmatch(raw):
            raise ValueError(raw)
        return raw

    return Kind(accepts, parse)


def integer(low: int, high: int | None = None) -> Kind:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < low or (high is not None and value > high):
            raise ValueError(raw)
        return value

    return Kind(
        f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}", parse
    )


def seconds(low: float, high: float, accepts: str | None = None) -> Kind:
    def parse(raw: str) -> float:
        value = float(raw)
        if not low <= value <= high:  # also false for NaN
            raise ValueError(raw)
        return value

    return Kind(accepts or f"seconds from {low:g} to {high:g}", parse)


def positive(unit: str) -> Kind:
    def parse(raw: str) -> float:
        value = float(raw)
        if not 0 < value < float("inf"):
            raise ValueError(raw)
        return value

    return Kind(f"a positive number of {unit}", parse)


def words(meanings: Mapping[str, object]) -> Kind:
    """One of a fixed set of words, each standing for a value (``true``/``false``, ``DEBUG``/``INFO``)."""
    return Kind(" or ".join(meanings), lambda raw: meanings[raw])


BOOLEAN = words({"true": True, "false": False})


def choice(*allowed: str) -> Kind:
    return words({w: w for w in allowed})


def checked(accepts: str, check: Callable[[str], object]) -> Kind:
    """Text kept as given once ``check`` (raising ValueError or a subclass) accepts it."""

    def parse(raw: str) -> str:
        check(raw)
        return raw

    return Kind(accepts, parse)


@dataclass(frozen=True)
class Setting:
    """One setting.  The config-file key is the flag without its dashes (``lb-cidr``, or
    ``lb_cidr``); the variable is ``PODGATE_`` + ``env``, by default the key upper-cased."""

    flag: str
    kind: Kind
    default: object
    help: str
    #: the variable's name after ``PODGATE_``, when it is not the key upper-cased
    env: str = ""
    #: another program's variable used when nothing of podgate's gives the setting
    ambient_env: str = ""
    #: None: the flag takes a value; True/False: the flag takes none and sets this.  A switch's
    #: variable holds the value itself (``kind``); its config-file key, like the flag, is
    #: ``true`` for "as if the flag were given"
    flag_sets: bool | None = None
    #: given several times: the flag repeated, the variable comma-separated, a list in the file
    repeated: bool = False
    short: str = ""
    metavar: str | None = None
    #: the attribute of the settings value this feeds: "" for the one named like ``dest``,
    #: "group.name" inside a group, None for a setting the command uses itself
    field: str | None = ""

    @property
    def key(self) -> str:
        return self.flag.removeprefix("--")

    @property
    def dest(self) -> str:
        return self.key.replace("-", "_")

    @property
    def target(self) -> str | None:
        return self.dest if self.field == "" else self.field

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + (self.env or self.dest.upper())

    @property
    def names(self) -> str:
        """How the setting is named in an error: the flag and the variable(s)."""
        return f"{self.flag} / {self.env_name}" + (f" / {self.ambient_env}" if self.ambient_env else "")

    def describe(self) -> str:
        """What a user may give, for the error message and the help."""
        if self.flag_sets is None:
            return self.kind.accepts + (", repeatable" if self.repeated else "")
        return f"no value; the variable takes {self.kind.accepts}, the config file {BOOLEAN.accepts}"


Values = dict[str, Any]
"""Resolved values by ``Setting.dest``."""


def add_arguments(parser: argparse.ArgumentParser, settings: Iterable[Setting]) -> None:
    """Each setting's flag (raw text only: the value is checked by ``resolve``), and ``--config``."""
    for s in settings:
        flags = [s.short, s.flag] if s.short else [s.flag]
        sources = s.env_name + (f", else the config file, else {s.ambient_env}" if s.ambient_env else "")
        if s.repeated:
            sources += ", comma-separated"
        default = "" if s.default in (None, ()) or s.flag_sets is not None else f"; default {s.default}"
        help_text = f"{s.help} ({s.describe()}{default}) [{sources}]".replace("%", "%%")
        if s.flag_sets is None:
            parser.add_argument(
                *flags,
                dest=s.dest,
                default=None,
                action="append" if s.repeated else "store",
                metavar=s.metavar,
                help=help_text,
            )
        else:
            parser.add_argument(*flags, dest=s.dest, default=None, action="store_true", help=help_text)
    parser.add_argument(
        CONFIG_FLAG,
        metavar="FILE",
        help="YAML mapping of settings named like the flags (e.g. lb-cidr: 127.200.0.0/16); a flag "
        f"wins over a {ENV_PREFIX}* variable, which wins over the file [{CONFIG_ENV}]",
    )


def resolve(settings: Sequence[Setting], flags: argparse.Namespace, environ: Mapping[str, str]) -> Values:
    """Every setting's value: flag > ``PODGATE_*`` variable > config file > ambient variable >
    default.  Raises SettingsError (one line, naming the setting) on the first bad value."""
    config_path = getattr(flags, "config", None) or environ.get(CONFIG_ENV) or None
    config = _read_config(config_path, settings) if config_path else {}
    values: Values = {}
    for s in settings:
        values[s.dest] = _resolve_one(s, getattr(flags, s.dest), environ, config, config_path)
    return values


def _resolve_one(
    s: Setting,
    flag: object,
    environ: Mapping[str, str],
    config: Mapping[str, object],
    config_path: str | None,
) -> object:
    if flag is not None:
        if s.flag_sets is not None:
            return s.flag_sets
        return _parse(s, s.kind, flag if isinstance(flag, list) else [str(flag)], s.flag)
    if environ.get(s.env_name):  # an empty variable is as if unset
        return _parse(s, s.kind, _split(s, environ[s.env_name]), s.env_name)
    if s.dest in config:
        return _from_file(s, config[s.dest], f"{config_path} ({s.key})")
    if s.ambient_env and environ.get(s.ambient_env):
        return _parse(s, s.kind, _split(s, environ[s.ambient_env]), s.ambient_env)
    return s.default


def _from_file(s: Setting, raw: object, source: str) -> object:
    items = raw if s.repeated and isinstance(raw, list) else [raw]
    if any(isinstance(item, dict | list) or item is None for item in items):
        raise SettingsError(f"{s.names}: {raw!r} from {source} is not accepted; expected {s.describe()}")
    texts = [str(i).lower() if isinstance(i, bool) else str(i) for i in items]  # YAML's true: True
    if s.flag_sets is None:
        return _parse(s, s.kind, texts, source)
    # a switch's key, like its flag, is "true" for "as if the flag were given"
    return s.flag_sets if _parse(s, BOOLEAN, texts, source) else not s.flag_sets


def _split(s: Setting, raw: str) -> list[str]:
    return [x for x in raw.split(",") if x] if s.repeated else [raw]


def _parse(s: Setting, kind: Kind, raws: list[str], source: str) -> object:
    values = []
    for raw in raws:
        try:
            values.append(kind.parse(raw))
        except (ValueError, KeyError):
            raise SettingsError(
                f"{s.names}: {raw!r} from {source} is not accepted; expected {kind.accepts}"
            ) from None
    return tuple(values) if s.repeated else values[0]


def _read_config(config_path: str, settings: Iterable[Setting]) -> dict[str, object]:
    """The config file's mapping, keyed by ``Setting.dest``; unknown keys are errors."""
    try:
        data = yaml.safe_load(Path(config_path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SettingsError(
            f"{CONFIG_FLAG} / {CONFIG_ENV}: {config_path}: {' '.join(str(e).split())}"
        ) from None
    if not isinstance(data, dict):
        raise SettingsError(
            f"{CONFIG_FLAG} / {CONFIG_ENV}: {config_path}: expected a mapping of setting: value"
        )
    known = {s.dest for s in settings}
    config = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in known:
            raise SettingsError(
                f"{CONFIG_FLAG} / {CONFIG_ENV}: {config_path}: unknown setting {key!r} "
                "(settings are named like the flags, e.g. lb-cidr)"
            )
        config[dest] = value
    return config
