"""The config file: YAML read into plain data for `tlsproxy.config.parse_config`, with errors that name
`--config` and say where the file is wrong."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tlsproxy.config import ConfigError


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that keeps scalars like 0660 as text: YAML 1.1 would read them as octal numbers,
    and a file mode written that way is meant as the digits the user typed."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.yaml_implicit_resolvers["0"].insert(0, ("tag:yaml.org,2002:str", re.compile(r"^0[0-7]+$")))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError("--config", f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping with a 'routes' list")
    return data or {}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: PyYAML's own text spans several, with the offending line drawn under a caret."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem or exc.context or 'cannot parse'} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())
