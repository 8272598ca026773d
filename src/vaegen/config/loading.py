"""YAML files and `--set key.path=value` overrides into a validated `Config`, with pydantic's errors as one paragraph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vaegen.config.messages import explain, is_section
from vaegen.config.schema import Config, Section, TestConfig, check_path_names
from vaegen.errors import ConfigError, plural


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read YAML `path` (or nothing), apply `--set key.path=value` overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    empty = path is not None and not raw
    for item in overrides:
        apply_override(raw, item)
    if empty and "data" not in raw:  # rather than "missing required key `data`", as if the rest were there
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        what = "holds only comments" if all(line.startswith("#") for line in lines) else "holds no settings"
        raise ConfigError(
            f"{path} {what if lines else 'is empty'}: a config needs at least the folder of training images, "
            "`data: {root: path/to/images}` (or --set data.root=path/to/images); every other key has a default, "
            "and configs/quickstart.yaml is a complete example."
        )
    return config_from_dict(raw, _source(path, overrides, "the config"))


def load_test_config(path: str | Path | None, overrides: list[str] = ()) -> TestConfig:
    raw = read_yaml(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw, _source(path, overrides, "the test config"), schema=TestConfig)


def _source(path: str | Path | None, overrides: list[str], default: str) -> str:
    # a problem may come from a --set value rather than the file
    return (str(path) if path is not None else default) + (" with its --set values" if overrides else "")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        check_path_names(path)
    except ValueError as exc:
        message = f"config file {path} cannot exist: {exc}. Pass an existing YAML file with --config."
        raise ConfigError(message) from None
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what}. Pass an existing YAML file with --config "
                          f"(the repository's examples are in configs/).")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}), so it cannot be a YAML "
                          f"config; pass the .yaml file.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}. Check "
                          f"indentation and that every `key: value` pair has a space after the colon.") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data:, model:, train:, ...), "
                          f"not a {type(raw).__name__}.")
    return raw or {}


def apply_override(raw: dict, item: str) -> None:
    """Apply one `key.path=value` override in place; the value is parsed as YAML."""
    key_path, sep, text = item.partition("=")
    if not sep or not all(key_path.strip().split(".")):
        raise ConfigError(f"--set {item!r} is not of the form key.path=value, e.g. --set train.epochs=5.")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())  # PyYAML's report spans lines with a caret drawing
        raise ConfigError(f"--set {item!r}: the value {text!r} is not valid YAML ({reason}); quote the whole --set "
                          f"argument in the shell.") from exc
    set_key_path(raw, key_path.strip(), value, where=f"--set {item!r}")


def set_key_path(raw: dict, key_path: str, value: Any, where: str = "") -> None:
    """raw["a"]["b"] = value for key_path "a.b", creating sections on the way."""
    keys = key_path.split(".")
    node = raw
    for depth, key in enumerate(keys[:-1]):
        if node.get(key) is None:  # `model:` with nothing under it is an empty section in YAML
            node[key] = {}
        if not isinstance(node[key], dict):
            raise ConfigError(f"{where or key_path}: `{'.'.join(keys[: depth + 1])}` is a value, not a section, so "
                              f"it has no `{keys[depth + 1]}`.")
        node = node[key]
    node[keys[-1]] = value


def check_key_path(key_path: str, source: str, schema: type[Section] = Config) -> None:
    """Raise the config's unknown-key error for a key path that names no setting of `schema`."""
    keys = key_path.split(".")
    node: Any = schema
    for depth, key in enumerate(keys):
        if not is_section(node):
            raise ConfigError(f"{source}: `{'.'.join(keys[:depth])}` is a value, not a section, so it has no `{key}`.")
        if key not in node.model_fields:
            unknown = {"type": "extra_forbidden", "loc": tuple(keys[: depth + 1])}
            raise ConfigError(f"{source}: {explain([unknown], schema)[0]}")
        node = node.model_fields[key].annotation
    if is_section(node):
        fields = ", ".join(f"{key_path}.{name}" for name in node.model_fields)
        raise ConfigError(f"{source}: `{key_path}` is a whole section; name one setting in it ({fields}).")


def config_from_dict(raw: dict, source: str = "the config", schema: type[Section] = Config) -> Config:
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        command = _meant_for(raw, schema)
        if command is not None:  # one line, rather than an unknown-key error for each of its sections
            raise ConfigError(
                f"{source} is a `{command}` config (top-level keys {', '.join(sorted(map(str, raw)))}); "
                f"pass it to `{command} --config`, or give this command one like those in configs/."
            ) from None
        problems = explain(exc.errors(), schema)
        raise ConfigError(f"{source} has {plural(len(problems), 'problem')}: " + " ".join(problems)) from None


def _meant_for(raw: dict, schema: type[Section]) -> str | None:
    """The command whose config `raw` is, when its top-level keys are another command's, not `schema`'s."""
    unknown = set(raw) - set(schema.model_fields)
    if len(unknown) < 2:  # one stray key is a typo, answered key by key
        return None
    if unknown & {"base", "space"}:  # a sweep (vaegen.tuning.sweep builds its schema on top of this module)
        return "vaegen tune"
    for command, other in (("vaegen train", Config), ("vaegen test", TestConfig)):
        if other is not schema and unknown <= set(other.model_fields):
            return command
    return None
