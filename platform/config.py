"""Typed configuration: dataclass trees filled from defaults < YAML < ``key.sub=value``.

Each component owns a small dataclass; a job config is a tree of them. Loading is
strict: an unknown key or a value of the wrong type stops the job before any work,
with a message naming the dotted key and the file it came from.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Optional, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the source."""


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{source}: '{key}' must not be null (expected {_describe(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{source}: '{key}' = {value!r} matches none of {_describe(tp)}"
        )
    if value is None:
        raise ConfigError(f"{source}: '{key}' must not be null (expected {_describe(tp)})")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{source}: '{key}' = {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, source=source, prefix=key)
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{source}: '{key}' must have {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {type(value).__name__}")
        kt, vt = get_args(tp) or (str, Any)
        return {_convert(k, kt, f"{key}", source): _convert(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{source}: '{key}' must be {tp.__name__}, got {type(value).__name__}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, strictly typed; missing keys keep defaults."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{key}' (known keys here: {known})")
        kwargs[k] = _convert(v, hints[k], key, source)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" under '{prefix}'" if prefix else ""
        raise ConfigError(f"{source}: missing required key(s){where}: {', '.join(missing)}")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {prefix or cls.__name__}: {e}") from e
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as e:
            raise ConfigError(f"{source}: {prefix or cls.__name__}: {e}") from e
    return obj


def to_dict(obj: Any) -> Any:
    """Plain data (for YAML/JSON) from a config tree."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=1`` -> (['a', 'b'], 1); the value is parsed as YAML (so lists, nulls, numbers work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from e
    return key.split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    out = json.loads(json.dumps(data, default=str)) if data else {}
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a mapping")
            node = child
        node[path[-1]] = value
    return out


def load_yaml(path: str) -> dict:
    from sama import storage

    try:
        data = yaml.safe_load(storage.read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load(cls: type[T], path: str | None = None, overrides: Sequence[str] = (), data: dict | None = None) -> T:
    """Defaults < YAML file (or ``data``) < overrides, into dataclass ``cls``."""
    base = load_yaml(path) if path and data is None else dict(data or {})
    source = path or "<config>"
    merged = apply_overrides(base, overrides)
    if overrides:
        source = f"{source} (with overrides {' '.join(overrides)})"
    return from_dict(cls, merged, source=source)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


# --- what every job config shares ---------------------------------------------------------


@dataclasses.dataclass
class RayConfig:
    address: str | None = None  # a cluster to join; null: $RAY_ADDRESS, else an embedded local Ray
    num_cpus: int | None = None  # embedded Ray only
    num_gpus: int | None = None  # embedded Ray only


@dataclasses.dataclass
class SubmitConfig:
    """How ``sama submit`` / ``sama render`` run this job on a cluster (the one owner of runtime_env)."""

    env_vars: dict[str, str] = dataclasses.field(default_factory=dict)  # plain settings, never secrets
    pass_env: list[str] = dataclasses.field(default_factory=list)  # submitter's env vars to forward, by name
    working_dir: str | None = None  # upload this folder (code not baked into the image); null: use the image
    entrypoint_num_cpus: float = 1.0
    entrypoint_num_gpus: float = 0.0
    entrypoint_resources: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class JobConfig:
    """The root of every job YAML: which job, where its outputs go, which Ray, how to submit it."""

    job: str = ""
    output: str = "outputs"  # local folder or s3:// prefix; the resolved config is written here
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    submit: SubmitConfig = dataclasses.field(default_factory=SubmitConfig)


@dataclasses.dataclass(frozen=True)
class JobEntry:
    """What a job module declares (as ``JOB``) so the launcher can run it: its config class,
    the entry point, optionally a dry run (``dry_run(cfg[, cluster=...]) -> lines``) and a
    preflight (inputs that must exist, checked before Ray starts, naming the config key)."""

    config: type
    run: Callable[..., Any]
    dry_run: Optional[Callable[..., list[str]]] = None
    preflight: Optional[Callable[[Any], None]] = None  # cheap checks before Ray starts; raises ConfigError
