"""Config loading at the edge: structured dataclass defaults <- YAML file <- CLI dotlist.

Library code only ever sees plain dataclasses; OmegaConf lives here and in the CLI.
An unknown key or a value of the wrong type fails at start-up with the key's path.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


def load_config(schema: type[T], yaml_path: str | Path | None = None, overrides: list[str] | None = None, *,
                yaml_text: str | None = None) -> T:
    """merge(structured(schema), yaml file or yaml_text, dotlist overrides) -> an instance of `schema`.

    yaml_text: the YAML itself instead of a file, e.g. the resolved config a checkpoint stores.
    """
    if not is_dataclass(schema):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    if yaml_path is not None and yaml_text is not None:
        raise ValueError("pass yaml_path or yaml_text, not both")
    layers: list[Any] = [OmegaConf.structured(schema)]
    try:
        if yaml_path is not None:
            path = Path(yaml_path)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            try:
                layers.append(OmegaConf.load(path))
            except yaml.YAMLError as e:  # not YAML at all: its first lines say where
                raise ConfigError(f"{path} is not valid YAML: {_first_line(e)}") from None
        if yaml_text is not None:
            try:
                layers.append(OmegaConf.create(yaml_text))
            except yaml.YAMLError as e:
                raise ConfigError(f"the stored config is not valid YAML: {_first_line(e)}") from None
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must look like key=value, got {bad}")
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(_one_line(e)) from None
    except (ValueError, TypeError) as e:  # a component's own check (__post_init__) refused a value
        raise ConfigError(f"{type(e).__name__}: {e}" if isinstance(e, TypeError) else str(e)) from None


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, for the run directory and checkpoints."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _first_line(e: Exception) -> str:
    return " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())


def _one_line(e: OmegaConfBaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    key = getattr(e, "full_key", None)
    head = lines[0] if lines else type(e).__name__
    return f"{head} (key: {key})" if key else head
