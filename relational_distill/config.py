"""Configs as data: one dataclass per long-running command; YAML files in configs/ mirror them and
command-line flags override them.

Every value is checked when it is read, from a file or a flag: its type against the dataclass annotation and
its range against :data:`RANGES` / :data:`CHOICES`; a bad one ends in one line naming the key, the value and
what is allowed (docs/reliability.md). A config is passed as a path or as the name of a shipped one
(``--config distill_cpu``); the shipped YAMLs live in the checkout's ``configs/`` folder and are installed as
package data (``relational_distill/configs/``).
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")
_UnionType = type(int | None)


def _config_dir() -> Path:
    """The shipped YAML configs: inside an installed package, else the checkout's configs/ folder."""
    here = Path(__file__).resolve().parent
    return here / "configs" if (here / "configs").is_dir() else here.parent / "configs"


CONFIG_DIR = _config_dir()


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed numbers: ``low`` <= x (or < x when ``low_open``), x <= ``high``; always finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def allows(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return self.high is None or x <= self.high

    def __str__(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is None:
            return low
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


# Ranges of the config keys of every command, by name (a key that is not listed is checked for type only).
RANGES: dict[str, Range] = {
    "epochs": Range(0), "batch_size": Range(1), "num_pairs": Range(1), "pairs_per_sample": Range(1),
    "lr": Range(0, low_open=True), "lr_head": Range(0, low_open=True), "lr_backbone": Range(0),
    "weight_decay": Range(0), "warmup_fraction": Range(0, 1), "temperature": Range(0, low_open=True),
    "superpixels": Range(2), "intra_weight": Range(0), "block_size": Range(1), "voxel_size": Range(0, low_open=True),
    "min_depth": Range(0), "seed": Range(0), "workers": Range(0), "fraction": Range(0, 1, low_open=True),
    "eval_every": Range(0),
}
CHOICES: dict[str, tuple] = {"optimizer": ("adamw", "sgd"), "voxel_mode": ("cartesian", "cylindrical"),
                             "relational_p": (1, 2)}


MAX_YAML_BYTES = 1 << 20   # configs, prompts, query and sim-teacher files are a few KiB
MAX_YAML_DEPTH = 32        # nesting levels
MAX_YAML_ALIASES = 64      # alias references
MAX_YAML_NODES = 100_000   # values once every alias is expanded: an alias bomb expands exponentially when printed


class _TooComplex(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 numbers: ``1e-3`` is a float (PyYAML's YAML 1.1 rules read it as a string), and with
    bounded nesting and alias references (docs/reliability.md)."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise _TooComplex(f"more than {MAX_YAML_ALIASES} alias references")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _TooComplex(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
            raise _TooComplex(f"more than {MAX_YAML_NODES:,} values once its aliases are expanded (an alias bomb?)")
        return node


def _expanded_size(node, sizes: dict) -> int:
    """Values under ``node`` with every alias expanded, computed once per distinct node (linear time)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = MAX_YAML_NODES + 1  # a node that contains itself expands without end
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        size = 1
    sizes[id(node)] = min(size, MAX_YAML_NODES + 1)
    return sizes[id(node)]


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def read_yaml(path: Path, what: str = "YAML file") -> Any:
    """The data of the YAML file ``path`` (safe types only); a file that cannot be read, is not UTF-8, is over
    1 MiB, is too deeply nested, holds too many aliases or is not YAML is a one-line :class:`UserError` naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise UserError(f"{path}: cannot read this {what} ({err.strerror or type(err).__name__})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise UserError(f"{path}: over {MAX_YAML_BYTES >> 20} MiB, too large for a {what}; pass the right file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); save the {what} as UTF-8") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except (yaml.YAMLError, _TooComplex, RecursionError, ValueError, TypeError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: not a valid {what} ({first})") from None


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(config: str | Path) -> Path:
    """A config given as a path (``configs/distill_cpu.yaml``) or as the name of a shipped one (``distill_cpu``)."""
    path = Path(config)
    if path.is_file():
        return path
    if path.parent == Path(".") and path.suffix in ("", ".yaml", ".yml"):
        shipped = CONFIG_DIR / f"{path.stem}.yaml"
        if shipped.is_file():
            return shipped
    raise UserError(f"--config {config}: no such file, and no shipped config of that name; pass a path or one of: "
                    f"{', '.join(shipped_configs())}")


def load_config(cls: type[T], path: str | Path | None, overrides: dict[str, Any]) -> T:
    """``cls`` from the YAML at ``path`` (a path or a shipped config's name), then the non-None ``overrides``
    (command-line flags). Unknown keys, and values of the wrong type or out of range, are an error."""
    data: dict[str, Any] = {}
    source: dict[str, str] = {}
    if path is not None:
        path = config_path(path)
        data = read_yaml(path, "config") or {}
        if not isinstance(data, dict):
            raise UserError(f"{path}: a config is a mapping of keys to values, e.g. 'epochs: 8'")
        source = {k: str(path) for k in data}
    for key, value in overrides.items():
        if value is not None:
            data[key], source[key] = value, f"--{key.replace('_', '-')}"
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise UserError(f"{path or 'options'}: unknown key(s) {', '.join(map(str, unknown))}; "
                        f"valid keys: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    checked = {key: check_value(key, value, hints[key], source[key]) for key, value in data.items()}
    return cls(**checked)


def check_value(key: str, value: Any, annotation: Any, where: str) -> Any:
    """``value`` converted to ``annotation`` (int, float, bool, str, tuple, X | None) and checked against the
    key's range or choices; else one :class:`UserError` line naming ``where``, the key, the value and what is
    allowed."""
    allowed = _describe(key, annotation)
    converted = _convert(value, annotation)
    ok = converted is not _BAD and (converted is None or _in_range(key, converted))
    if not ok:
        raise UserError(f"{where}: {key} = {value!r} ({type(value).__name__}) is not allowed; {key} must be {allowed}")
    return converted


_BAD = object()


def _convert(value: Any, annotation: Any) -> Any:
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, _UnionType) else None
    if options is not None:
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None) and (out := _convert(value, option)) is not _BAD:
                return out
        return _BAD
    if annotation is bool:
        return value if isinstance(value, bool) else _BAD
    if annotation is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if annotation is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _BAD
    if annotation is str:
        return value if isinstance(value, str) else _BAD
    if typing.get_origin(annotation) is tuple or annotation is tuple:
        return tuple(value) if isinstance(value, (list, tuple)) else _BAD
    return value  # a type this checker does not know: the dataclass takes it as it is


def _in_range(key: str, value: Any) -> bool:
    if key in CHOICES:
        return value in CHOICES[key]
    if key in RANGES and isinstance(value, (int, float)):
        return RANGES[key].allows(value)
    return True


def _describe(key: str, annotation: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, _UnionType) else (annotation,)
    kinds = [names.get(o, "a list" if typing.get_origin(o) is tuple else getattr(o, "__name__", str(o)))
             for o in options if o is not type(None)]
    text = " or ".join(kinds)
    if key in CHOICES:
        text = "one of " + ", ".join(map(str, CHOICES[key]))
    elif key in RANGES:
        text += f" {RANGES[key]}"
    return text + (" (or null)" if type(None) in options else "")

