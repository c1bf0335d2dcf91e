"""Typed YAML configuration: strict pydantic models, errors that name the file and the field.

Every config in the project is a :class:`StrictModel`; :func:`load_config` reads a YAML file into one, applies
dotted overrides (``{"chain.noise.probability": 0.5}``) from CLI flags, and raises :class:`ConfigError` whose
message names the file and the dotted field path of every problem. A problem in an overridden field names the
flag that set it (``--set segment.tail=cut: segment.tail: ...``), not the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from datasets.errors import HiresError

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"

M = TypeVar("M", bound="StrictModel")


class ConfigError(HiresError, ValueError):
    """A configuration file or override is invalid; the message names the file and the field."""


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def override_label(key: str, value: Any) -> str:
    """How a dotted override is named in errors when its caller gives no flag: the generic ``--set KEY=VALUE``."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"--set {key}={text}"


def _problem(e: dict) -> tuple[str, str]:
    field = ".".join(str(p) for p in e["loc"]) or "<root>"
    if e["type"] == "extra_forbidden":
        return field, f"{field}: unknown key"
    return field, f"{field}: {e['msg']} (got {e.get('input')!r})"


def format_validation_error(
    source: str, err: ValidationError, overrides: Mapping[str, str] | None = None
) -> str:
    """One line: every problem with its dotted field. ``overrides`` maps dotted keys set from the command line
    to the flag that set them: a problem at or under such a key names that flag instead of ``source``, and a
    problem of a section holding one names both (``FILE with --set ...``)."""
    overrides = overrides or {}
    groups: dict[str, list[str]] = {}
    for e in err.errors():
        field, text = _problem(e)
        flags = [flag for key, flag in overrides.items() if field == key or field.startswith(key + ".")]
        if flags:
            where = flags[0]
        else:
            inside = [
                flag for key, flag in overrides.items() if key.startswith(field + ".") or field == "<root>"
            ]
            where = (
                f"{source} with {', '.join(inside)}: invalid config"
                if inside
                else f"{source}: invalid config"
            )
        groups.setdefault(where, []).append(text)
    return "; ".join(f"{where}: " + "; ".join(texts) for where, texts in groups.items())


def _set_dotted(data: dict, dotted: str, value: Any, label: str | None = None) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{label or 'override ' + dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; empty file gives ``{}``; anything else than a mapping is a ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    section: str | None = None,
    flags: Mapping[str, str] | None = None,
) -> M:
    """Load ``path`` (optional) into ``model``, then apply dotted ``overrides`` (``None`` values are skipped).

    ``section`` picks one top-level key of the file (e.g. ``chain`` out of a synth config). ``flags`` maps an
    override key to the command-line flag that set it, for error messages (default: ``--set KEY=VALUE``).
    """
    source = str(path) if path is not None else "<defaults>"
    data: dict = read_yaml(path) if path is not None else {}
    if section is not None:
        data = data.get(section) or {}
        source = f"{source}[{section}]"
    labels: dict[str, str] = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            labels[key] = (flags or {}).get(key) or override_label(key, value)
            _set_dotted(data, key, value, labels[key])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e, labels)) from None


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (what ``--print-config`` shows)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
