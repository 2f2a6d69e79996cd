"""The spec's search-parameter FHIRPath expressions, compiled into plain JSON walks.

The R4 definitions use a small part of FHIRPath: dotted paths, `as Type` /
`.as(Type)` on choice elements, `.where(resolve() is Type)` on references and
`.where(field='value')`. We compile each expression once, against the
`fhir.resources` models, into `Leaf`s: the concrete JSON keys to follow (choice
elements resolved to `valueQuantity` etc.) and the FHIR datatype found at the
end, so extraction at write time is a few dict lookups per parameter and knows
how to normalise what it finds. Expressions outside that subset raise
`Unsupported` and the parameter is left out (and so not advertised).
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel


class Unsupported(Exception):
    """An expression this compiler does not handle."""


@dataclass(frozen=True)
class Leaf:
    steps: tuple[tuple[str, ...], ...]
    datatype: str

    def evaluate(self, resource: dict[str, Any]) -> list[Any]:
        nodes: list[Any] = [resource]
        for step in self.steps:
            kind = step[0]
            out: list[Any] = []
            if kind == "key":
                for node in nodes:
                    value = node.get(step[1]) if isinstance(node, dict) else None
                    if isinstance(value, list):
                        out.extend(value)
                    elif value is not None:
                        out.append(value)
            elif kind == "first":
                for node in nodes:
                    value = node.get(step[1]) if isinstance(node, dict) else None
                    if isinstance(value, list) and value:
                        out.append(value[0])
            elif kind == "ref_type":
                out = [n for n in nodes if isinstance(n, dict) and reference_type(n.get("reference")) == step[1]]
            elif kind == "eq":
                out = [n for n in nodes if isinstance(n, dict) and n.get(step[1]) == step[2]]
            nodes = out
            if not nodes:
                break
        return nodes


def reference_type(reference: Any) -> str | None:
    """The resource type a reference string points at ("Patient/1", "http://x/fhir/Patient/1/_history/2")."""
    if not isinstance(reference, str):
        return None
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return parts[-2] if len(parts) >= 2 else None


_WHERE_TYPE = re.compile(r"where\(resolve\(\) is ([A-Za-z]+)\)")
_WHERE_EQ = re.compile(r"where\(([a-zA-Z]+)\s*=\s*'([^']*)'\)")
_AS_CALL = re.compile(r"as\(([A-Za-z]+)\)")
_INDEXED = re.compile(r"([a-zA-Z]+)\[0\]")


def compile_expression(expression: str, resource_type: str) -> list[Leaf]:
    """Every `Leaf` of the union parts of `expression` that apply to `resource_type`."""
    leaves: list[Leaf] = []
    for part in _split_union(expression):
        root = part.split(".", 1)[0].lstrip("(")
        if root in (resource_type, "Resource", "DomainResource"):
            leaves += _compile_path(part, resource_type)
    return leaves


def _split_union(expression: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in expression:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def _tokens(path: str) -> list[str]:
    """`(Observation.value as Quantity).text` → Observation, value, as(Quantity), text."""
    path = path.strip()
    path = re.sub(r"^\((.*) as ([A-Za-z]+)\)", r"\1.as(\2)", path)
    path = re.sub(r" as ([A-Za-z]+)$", r".as(\1)", path)
    if path.startswith("(") and path.endswith(")"):
        path = path[1:-1]
    tokens, depth, current = [], 0, ""
    for ch in path:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "." and depth == 0:
            tokens.append(current)
            current = ""
        else:
            current += ch
    tokens.append(current)
    return tokens


_Branch = tuple[tuple[tuple[str, ...], ...], str, Any]  # steps, datatype, model class (or None)


def _compile_path(path: str, resource_type: str) -> list[Leaf]:
    tokens = _tokens(path)
    cls = get_fhir_model_class(resource_type)
    branches: list[_Branch] = [((), resource_type, cls)]
    for token in tokens[1:]:
        if m := _WHERE_TYPE.fullmatch(token):
            branches = [(steps + (("ref_type", m[1]),), dt, c) for steps, dt, c in branches]
        elif m := _WHERE_EQ.fullmatch(token):
            branches = [(steps + (("eq", m[1], m[2]),), dt, c) for steps, dt, c in branches]
        elif m := _AS_CALL.fullmatch(token):
            wanted = m[1].lower()
            branches = [b for b in branches if b[1].lower() == wanted]
        elif m := _INDEXED.fullmatch(token):
            branches = [(steps + (("first", m[1]),), dt2, c2)
                        for steps, _dt, c in branches for _key, dt2, c2 in _fields(c, m[1])]
        elif re.fullmatch(r"[a-zA-Z]+", token):
            branches = [(steps + (("key", key),), dt2, c2)
                        for steps, _dt, c in branches for key, dt2, c2 in _fields(c, token)]
        else:
            raise Unsupported(f"{path}: cannot compile '{token}'")
        if not branches:
            raise Unsupported(f"{path}: '{token}' leads nowhere in the {resource_type} model")
    return [Leaf(steps, dt) for steps, dt, _c in branches]


def _fields(cls: Any, name: str) -> list[tuple[str, str, Any]]:
    """(JSON key, datatype, model class) of element `name`; several for a choice element."""
    if cls is None:
        raise Unsupported(f"cannot walk into '{name}' of a primitive")
    fields = {(info.alias or key): info for key, info in cls.model_fields.items() if not key.endswith("__ext")}
    if name in fields:
        return [(name, *_datatype(fields[name].annotation))]
    out = []
    for key, info in fields.items():
        if key.startswith(name) and len(key) > len(name) and key[len(name)].isupper():
            out.append((key, *_datatype(info.annotation)))
    return out


def _datatype(annotation: Any) -> tuple[str, Any]:
    """FHIR datatype name of a model field annotation, and its model class if complex."""
    inner = annotation
    while typing.get_origin(inner) in (typing.Union, list, types.UnionType):
        inner = next(a for a in typing.get_args(inner) if a is not type(None))
    if typing.get_origin(inner) is typing.Annotated:
        meta = typing.get_args(inner)[1]
        name = type(meta).__name__
        return name[0].lower() + name[1:], None
    if inner is bool:
        return "boolean", None
    name = getattr(inner, "__name__", "")
    if name.endswith("Type"):
        name = name[: -len("Type")]
        if name in ("Resource", "DomainResource"):
            return "Resource", None
        model = get_fhir_model_class(name)
        if isinstance(model, type) and issubclass(model, BaseModel):
            return name, model
    raise Unsupported(f"unknown annotation {annotation!r}")
