"""pydantic's structured errors as sentences (the key path, the value, what is allowed), and what a setting takes."""

from __future__ import annotations

import difflib
import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

WRONG_KIND = ("_type", "_parsing", "literal_error")  # pydantic's error types for a value of another kind
_KINDS = {int: "a number", float: "a number", str: "a name", Path: "a path", tuple: "a list", list: "a list"}


def explain(errors: list[dict], schema: type[BaseModel]) -> list[str]:
    """One sentence per setting from pydantic's structured errors (`type`, `loc`, `input`, `ctx`, `msg`)."""
    groups: dict[tuple, tuple[tuple, list[dict]]] = {}
    for error in errors:
        where = _locate(error["loc"], schema)
        groups.setdefault(where[:2], (where, []))[1].append(error)
    return [_sentence(where, group) for where, group in groups.values()]


def _locate(loc: tuple, schema: type[BaseModel]) -> tuple[tuple[str, ...], int | None, Any, Any]:
    """(key path, list item, the section holding the key, what the key takes) of a pydantic error location."""
    keys, item, parent, annotation = [], None, None, schema
    for part in loc:
        if isinstance(part, int):
            item = part
        elif is_section(annotation):
            field = annotation.model_fields.get(part)
            parent, annotation = annotation, field.annotation if field is not None else None
            keys.append(part)
        elif get_origin(annotation) is dict:  # a free key, such as a sweep's `space: {optim.lr: ...}`
            parent, annotation = None, get_args(annotation)[1]
            keys.append(part)
        else:  # past a setting, pydantic names the member of a union that failed (`literal['auto']`, `bool`)
            break
    return tuple(keys), item, parent, annotation


def _sentence(where: tuple, errors: list[dict]) -> str:
    keys, item, parent, annotation = where
    takes = annotation if item is None else items_of(annotation)
    # a failed `A | B` is reported once per alternative: a broken bound (eval.batch_size: 0) speaks for the setting,
    # and a value of the wrong kind is told what the setting takes
    error = next((error for error in errors if not error["type"].endswith(WRONG_KIND)), None)
    error = error or ({**errors[0], "msg": f"Input should be {allowed(takes)}"} if allowed(takes) else errors[0])
    key, kind, value = ".".join(keys), error["type"], error.get("input")
    at = "" if item is None else f" item {item + 1}"
    message = (str(error["ctx"]["error"]) if kind == "value_error" else error.get("msg", "")).rstrip(".")
    field = parent.model_fields.get(keys[-1]) if parent is not None and item is None else None
    default = None if field is None or field.is_required() else field.get_default(call_default_factory=True)
    default = "" if default is None else as_yaml(default)
    if kind == "extra_forbidden":
        valid, scope = list(parent.model_fields), f"`{'.'.join(keys[:-1])}`" if keys[:-1] else "the top level"
        hint = did_you_mean(keys[-1], valid) or f"valid keys in {scope}: {', '.join(valid)}."
        return f"unknown key `{key}`; {hint}"
    if kind == "missing":
        return f"`{key}` has too few values:{at} is missing." if at else f"missing required key `{key}`."
    if kind == "yes_no":
        return f"`{key}` {message}."
    if is_section(annotation) and value is not None and not isinstance(value, dict):  # `data: data/apples_sample`
        fields = annotation.model_fields
        first = next((name for name, info in fields.items() if info.is_required()), next(iter(fields)))
        fits = fields[first].is_required() and isinstance(value, str)  # `data: x` means `data: {root: x}`
        example = as_yaml({first: value}) if fits else f"{{{first}: ...}}"
        given = "a list" if isinstance(value, list) else "a single value"
        return (f"`{key}` is a section of keys ({', '.join(fields)}), not {given} ({as_yaml(value)}); "
                f"write it as e.g. `{keys[-1]}: {example}`.")
    if isinstance(value, dict) and allowed(takes):  # --set train.epochs.x=1
        what = "a list" if items_of(takes) is not None else "a single value"
        return (f"`{key}`{at} is {what} with no keys under it, not a mapping ({as_yaml(value)}); give it a value itself"
                + (f" (the default is {default})." if default else "."))
    if kind == "value_error" and isinstance(value, dict):  # a section's own check: its dict would bury the message
        return f"`{key}`: {message}." if key else f"{message}."
    if value is None:  # `key:` with nothing after it, or --set key=
        what = f" ({field.description})" if field is not None and field.description else ""
        instead = f", or leave it out for the default, {default}" if default else ""
        return f"`{key}`{at} is empty: give it a value{what}{instead}."
    shown = as_yaml(value) if isinstance(value, (list, tuple)) else repr(value)  # [64, null], not [64, None]
    return f"`{key}`{at} = {shown} is not allowed: {message}."


def did_you_mean(word: str, valid: list[str]) -> str | None:
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.5)
    return f"did you mean `{close[0]}`?" if close else None


def as_yaml(value: Any) -> str:
    """`value` as it is written in a config file (true, not True; {root: x})."""
    plain = json.loads(json.dumps(value, default=str))  # tuples as lists, paths as text: always dumpable
    return yaml.safe_dump(plain, default_flow_style=True, width=1_000).strip().removesuffix("...").strip()


def allowed(annotation: Any) -> str | None:
    """What a setting takes, in words ("a number or 'auto'"); None for sections and mappings, whose errors say it."""
    kinds, choices = [], []
    for part in _alternatives(annotation):
        origin = get_origin(part)
        if part is Any or is_section(part) or origin is dict:
            return None
        if part is bool or origin is Literal:
            choices += ["true", "false"] if part is bool else [repr(choice) for choice in get_args(part)]
        elif (origin or part) in _KINDS:
            kinds.append(_KINDS[origin or part])
    words = list(dict.fromkeys(kinds)) + ([either(choices)] if choices else [])
    return either(words) if words else None


def either(words: list[str]) -> str:
    """'a', 'a or b', 'a, b or c': as pydantic lists choices."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _alternatives(annotation: Any) -> list[Any]:
    """The types a setting takes, with unions, `| None` and constraints (PositiveInt) unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _alternatives(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [part for arg in get_args(annotation) for part in _alternatives(arg)]
    return [] if annotation is type(None) else [annotation]


def items_of(annotation: Any) -> Any:
    """The item type of a list setting (tuple[int, ...], tuple[float, float]); None when it takes no list."""
    lists = [part for part in _alternatives(annotation) if get_origin(part) in (tuple, list)]
    return (get_args(lists[0]) or (Any,))[0] if lists else None


def mentions(annotation: Any, kind: type) -> bool:
    return annotation is kind or any(mentions(arg, kind) for arg in get_args(annotation))


def takes_only_mappings(annotation: Any) -> bool:
    return is_section(annotation) or get_origin(annotation) is dict


def is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
