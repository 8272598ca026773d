"""Write docs/config.md, the config reference, from the pydantic models in src/vaegen/config/schema.py.

    python scripts/config_reference.py          # rewrite docs/config.md
    python scripts/config_reference.py --check  # exit 1 when docs/config.md differs from what this writes

Every key's type, bounds and default come from its annotation and Field; its text is the Field's description
and a section's is the first line of its class docstring. tests/test_config.py fails when the page is stale.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vaegen.config import Config, TestConfig

PAGE = REPO / "docs" / "config.md"
COMMAND = "python scripts/config_reference.py"
BOUNDS = {"ge": "≥ {}", "gt": "> {}", "le": "≤ {}", "lt": "< {}", "min_length": "min length {}",
          "max_length": "max length {}", "pattern": "matching `{}`"}
NAMES = {int: "int", float: "float", str: "text", Path: "path", bool: "true or false", type(None): "null", Any: "any"}


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        f"Generated from `src/vaegen/config/schema.py` by `{COMMAND}`; edit the field descriptions there, not this page.",
        "A config is YAML; `--set key.path=value` overrides one key (the value is read as YAML). Unknown keys are",
        "errors, and every key has a default except `data.root`.",
        "",
        "## `vaegen train --config FILE`",
        "",
        *section(Config),
        "## `vaegen test --config FILE`",
        "",
        *section(TestConfig),
    ]
    return "\n".join(lines).rstrip() + "\n"


def section(model: type[BaseModel], prefix: str = "") -> list[str]:
    """A table of `model`'s settings, then one table per section under it."""
    settings = {name: info for name, info in model.model_fields.items() if not is_section(info.annotation)}
    lines = [first_line(model.__doc__), ""] if prefix else []
    if settings:
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        lines += [f"| `{prefix}{name}` | {cell(kind(info.annotation, info.metadata))} | {cell(default(info))} | "
                  f"{cell(info.description or '')} |" for name, info in settings.items()]
        lines.append("")
    for name, info in model.model_fields.items():
        if is_section(info.annotation):
            lines += [f"### `{prefix}{name}`", "", *section(info.annotation, f"{prefix}{name}.")]
    return lines


def kind(annotation: Any, metadata: list = ()) -> str:
    """The type in words, with its bounds: int (≥ 1), `mse`, `bce` or `gaussian`, list of int (min length 1)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return kind(args[0], [*metadata, *args[1:]])
    if origin in (Union, types.UnionType):
        words = kind(args[0], metadata)
        return " or ".join([words, *(kind(arg) for arg in args[1:])])
    if origin is Literal:
        choices = [f"`{choice}`" for choice in args]
        words = choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
    elif origin in (tuple, list):
        fixed = len(args) == 2 and args[1] is not Ellipsis
        words = f"[{kind(args[0])}, {kind(args[1])}]" if fixed else f"list of {kind(args[0])}"
    else:
        words = NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    bounds = [BOUNDS[name].format(getattr(item, name)) for item in metadata for name in BOUNDS
              if getattr(item, name, None) is not None]
    return f"{words} ({', '.join(bounds)})" if bounds else words


def default(info: Any) -> str:
    if info.is_required():
        return "required"
    value = json.loads(json.dumps(info.get_default(call_default_factory=True), default=str))
    return f"`{yaml.safe_dump(value, default_flow_style=True, width=1_000).strip().removesuffix('...').strip()}`"


def cell(text: str) -> str:
    """`text` inside a Markdown table cell: a pipe would end the cell, and <run> would be read as an HTML tag."""
    return re.sub(r"<(?=\w)", "&lt;", text.replace("|", "\\|").replace("\n", " "))


def first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def main() -> int:
    page = render()
    if "--check" in sys.argv[1:]:
        current = PAGE.read_text(encoding="utf-8") if PAGE.exists() else ""
        if current != page:
            print(f"{PAGE.relative_to(REPO)} is stale; regenerate it with `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
