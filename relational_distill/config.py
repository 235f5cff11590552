"""Configs as data: one dataclass per long-running command; YAML files in configs/ mirror them and
command-line flags override them."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
T = TypeVar("T")


def load_config(cls: type[T], path: Path | None, overrides: dict[str, Any]) -> T:
    """``cls`` from the YAML at ``path`` (if any), then the non-None ``overrides``. Unknown keys are an error."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: no such config file; see {CONFIG_DIR} for examples")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{path or 'options'}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
    for f in dataclasses.fields(cls):
        if f.name in data and isinstance(data[f.name], list):
            data[f.name] = tuple(data[f.name])
    return cls(**data)
