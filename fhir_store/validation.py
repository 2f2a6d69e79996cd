"""Turn untrusted JSON into a resource the store may keep, or say precisely why not.

Validation uses the `fhir.resources` R4B models for structure, types and
cardinality. Those models do not enforce the codes of required bindings
(`Patient.gender = "xyz"` passes them), and the `enum_values` in their field
metadata are parsed from element titles, so they are sometimes incomplete
(`Observation.status` lacks `cancelled`). A second pass therefore walks the
validated model and checks each `code` element against the value set the spec
binds it to, expanded from the spec package into `spec/required_bindings.json`
(see `scripts/build_spec_tables.py`). Every problem is reported with its
FHIRPath-style element path.

Before either, a cheap walk (a stack, never recursion) checks the JSON's shape:
every key must be a FHIR element name, so no key that starts with `$` or holds
a `.` (MongoDB would read them as operators and paths) ever reaches the
database, however deep it hides; nesting is bounded (`MAX_DEPTH`), and so is
each array (`MAX_ARRAY_ITEMS`), so a hostile body is refused at once rather
than after seconds of model validation. Last, the resource must fit a MongoDB
document with room for its search index (`MAX_RESOURCE_BYTES`).

Each text value has a length limit too (`ElementLimits`), checked in the same
typed walk as the required codes, since only the model knows an element's type:
FHIR caps a `string` at 1 MiB, and identifying elements (names, identifiers,
phone numbers, addresses, codes, ids, URIs) get a much smaller one, because a
name of megabytes is an attack, not a name, and it would be indexed and shown
on every ward terminal. Types large by nature (`markdown`, `base64Binary` such
as `Attachment.data`, the narrative's xhtml) are bounded by the resource size
alone.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import bson
from fhir.resources.R4B.fhirprimitiveextension import FHIRPrimitiveExtension
from pydantic import BaseModel, ValidationError

from fhir_store.errors import InvalidResource, Issue, PayloadTooLarge, UnknownResourceType
from fhir_store.fhir_json import MAX_DEPTH, exact_numbers
from fhir_store.resource_types import model_class
from fhir_store.text import nfc

#: Most items one array of a resource may hold: a Patient with 100,000 names is refused at once, while
#: the ICD-10 CodeSystem (12,542 concepts) and a commune list load.
MAX_ARRAY_ITEMS = 50_000
#: Largest resource kept, as BSON: MongoDB holds at most 16 MiB per document, the search index included.
MAX_RESOURCE_BYTES = 12 * 1024 * 1024
#: A FHIR JSON key: an element name, or `_name` for a primitive's id and extensions.
_ELEMENT_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9]{0,127}")
#: Shape problems reported at most (one hostile body could otherwise fill the answer with them).
_MAX_SHAPE_ISSUES = 20
#: The longest `string` value, in characters: FHIR's own limit ("SHALL NOT exceed 1,048,576 characters").
MAX_STRING_CHARS = 1024 * 1024
#: The longest value of an identifying element (see `_SHORT_ELEMENTS`, `_SHORT_TYPES`).
MAX_SHORT_STRING_CHARS = 4096
#: Primitive types whose values are identifiers, never prose: each value is short.
_SHORT_TYPES = frozenset({"code", "id", "uri", "url", "canonical", "oid", "uuid"})
#: `string` elements that identify or address someone or something, kept short like the types above.
_SHORT_ELEMENTS = frozenset({
    "HumanName.family", "HumanName.given", "HumanName.prefix", "HumanName.suffix", "HumanName.text",
    "Identifier.value", "ContactPoint.value", "Coding.display", "Coding.version", "Reference.reference",
    "Address.line", "Address.city", "Address.district", "Address.state", "Address.postalCode", "Address.country",
    "Address.text",
})
# How long a value of an element may be: the limits' `chars` (ordinary `string`), their `short_chars`, or no
# limit of its own (`markdown`, `base64Binary`, xhtml, and elements that are not text).
_ORDINARY, _SHORT, _UNBOUNDED = 0, 1, 2


@dataclass(frozen=True)
class ElementLimits:
    """The longest text value an element may hold, in characters (the store's configuration)."""

    chars: int = MAX_STRING_CHARS
    short_chars: int = MAX_SHORT_STRING_CHARS

    def of(self, kind: int) -> int | None:
        return (self.chars, self.short_chars, None)[kind]


DEFAULT_LIMITS = ElementLimits()

# Per model class: (attribute name, JSON name, allowed codes or None, length kind) of each element field.
_FieldPlan = tuple[tuple[str, str, frozenset[str] | None, int], ...]
_plans: dict[type[BaseModel], _FieldPlan] = {}


def validate_resource(data: Any, *, expected_type: str | None = None,
                      limits: ElementLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Check `data` and return it with every string NFC-normalised.

    The returned dict is the client's JSON (not a model dump), so what is read
    back is what was sent, apart from `meta` which the store owns.
    """
    if not isinstance(data, dict):
        raise InvalidResource("The body must be a JSON object holding one FHIR resource")
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str):
        raise InvalidResource(
            "The resource has no resourceType",
            [Issue("required", "The resource has no resourceType", expression=("resourceType",))],
        )
    if expected_type is not None and resource_type != expected_type:
        raise InvalidResource(
            f"The body holds a {resource_type} but the URL names {expected_type}",
            [Issue("invalid", f"resourceType '{resource_type}' does not match the URL's type '{expected_type}'",
                   expression=("resourceType",))],
        )
    cls = model_class(resource_type)
    if cls is None:
        raise UnknownResourceType(f"Unknown resource type '{resource_type}'")
    check_shape(data, resource_type)
    resource = nfc_resource(data)
    try:
        model = cls.model_validate(resource)
    except ValidationError as exc:
        issues = [_issue_from_pydantic(resource_type, err) for err in exc.errors()]
        raise InvalidResource(f"{resource_type} failed validation: {issues[0].diagnostics}", issues) from None
    wrong_codes: list[Issue] = []
    too_long: list[Issue] = []
    _check_elements(model, resource_type, limits, wrong_codes, too_long)
    if too_long:
        raise PayloadTooLarge(f"{resource_type} is too large: {too_long[0].diagnostics}", too_long + wrong_codes)
    if wrong_codes:
        raise InvalidResource(f"{resource_type} failed validation: {wrong_codes[0].diagnostics}", wrong_codes)
    _check_size(resource, resource_type)
    return resource


# A node of the shape walk: (value, depth, parent node or None, the key or index leading here).
_Node = tuple[Any, int, Any, str | int | None]


def check_shape(data: dict[str, Any], resource_type: str) -> None:
    """Refuse keys that are not FHIR element names (`$set`, `a.b`, `__proto__`), nesting deeper than
    `MAX_DEPTH` and arrays longer than `MAX_ARRAY_ITEMS`, each with its element path."""
    issues: list[Issue] = []
    too_large: list[Issue] = []
    stack: list[_Node] = [(data, 1, None, None)]
    while stack and len(issues) + len(too_large) < _MAX_SHAPE_ISSUES:
        node = stack.pop()
        value, depth = node[0], node[1]
        if depth > MAX_DEPTH:
            path = _node_path(resource_type, node)
            issues.append(Issue("structure", f"{path}: nested more than {MAX_DEPTH} levels deep (the limit is "
                                             f"{MAX_DEPTH})", expression=(path,)))
            continue
        if isinstance(value, dict):
            for key, child in value.items():
                if not _ELEMENT_NAME.fullmatch(key):
                    path = _node_path(resource_type, (child, depth + 1, node, key))
                    issues.append(Issue("structure", f"{path}: '{_shown(key)}' {_why_not_a_name(key)}",
                                        expression=(path,)))
                elif isinstance(child, dict | list):
                    stack.append((child, depth + 1, node, key))
        else:
            if len(value) > MAX_ARRAY_ITEMS:
                path = _node_path(resource_type, node)
                too_large.append(Issue("too-costly", f"{path} has {len(value)} items; an array may hold at most "
                                                     f"{MAX_ARRAY_ITEMS} (the limit)", expression=(path,)))
                continue
            stack.extend((child, depth + 1, node, i) for i, child in enumerate(value)
                         if isinstance(child, dict | list))
    if too_large:
        raise PayloadTooLarge(f"{resource_type} is too large: {too_large[0].diagnostics}", too_large + issues)
    if issues:
        raise InvalidResource(f"{resource_type} failed validation: {issues[0].diagnostics}", issues)


def _why_not_a_name(key: str) -> str:
    if key.startswith("$"):
        return "is not a FHIR element name: keys never start with '$'"
    if "." in key:
        return "is not a FHIR element name: keys never contain '.'"
    return "is not a FHIR element name"


def _shown(key: str) -> str:
    return key if len(key) <= 64 else key[:64] + "…"


def _node_path(resource_type: str, node: _Node) -> str:
    steps: list[str | int] = []
    while node[2] is not None:
        steps.append(node[3])  # type: ignore[arg-type]
        node = node[2]
    out = resource_type
    for step in reversed(steps):
        out += f"[{step}]" if isinstance(step, int) else f".{_shown(step)}"
    return out


def _check_size(resource: dict[str, Any], resource_type: str) -> None:
    try:
        size = len(bson.encode({"res": resource, "num": exact_numbers(resource)}))  # as `documents.py` keeps it
    except (bson.errors.InvalidDocument, OverflowError):
        raise InvalidResource(f"{resource_type} holds a value the database cannot keep") from None
    if size > MAX_RESOURCE_BYTES:
        raise PayloadTooLarge(f"{resource_type} is {size:,} bytes as stored; a resource may be at most "
                              f"{MAX_RESOURCE_BYTES:,} bytes (the limit), which leaves room for its search index "
                              "in a MongoDB document")


def nfc_json(value: Any) -> Any:
    """NFC-normalise every string in a JSON value (Vietnamese text arrives both ways)."""
    if isinstance(value, str):
        return nfc(value)
    if isinstance(value, dict):
        return {k: nfc_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nfc_json(v) for v in value]
    return value


def _issue_from_pydantic(resource_type: str, err: Any) -> Issue:
    path = _path(resource_type, err.get("loc", ()))
    kind = err.get("type", "")
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    code = {"missing": "required", "extra_forbidden": "structure"}.get(kind, "value")
    if kind == "extra_forbidden":
        message = "Unknown element"
    return Issue(code, f"{path}: {message}", expression=(path,))


def _path(resource_type: str, loc: tuple[Any, ...]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("__root__",):
            out += f".{str(part).removesuffix('__ext')}"
    return out


@cache
def _required_bindings() -> dict[str, frozenset[str]]:
    path = Path(__file__).parent / "spec" / "required_bindings.json"
    table = json.loads(path.read_text(encoding="utf-8"))["bindings"]
    return {key: frozenset(codes) for key, codes in table.items()}


def _plan(cls: type[BaseModel]) -> _FieldPlan:
    plan = _plans.get(cls)
    if plan is None:
        bindings = _required_bindings()
        entries: list[tuple[str, str, frozenset[str] | None, int]] = []
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if name.endswith("__ext"):  # `_family`: the primitive's id and extensions, walked like any element
                entries.append((name, info.alias or name, None, _UNBOUNDED))
            elif extra.get("element_property") or (cls is FHIRPrimitiveExtension and name in ("id", "extension")):
                element = f"{cls.__name__}.{name}"
                entries.append((name, info.alias or name, bindings.get(element), _length_kind(element, name, info)))
        plan = _plans[cls] = tuple(entries)
    return plan


def _length_kind(element: str, name: str, info: Any) -> int:
    kind = _primitive_type(info.annotation)
    if kind in _SHORT_TYPES or (kind == "string" and (element in _SHORT_ELEMENTS or name == "id")):  # Element.id
        return _SHORT
    return _ORDINARY if kind == "string" else _UNBOUNDED


def _primitive_type(annotation: Any) -> str | None:
    """The FHIR primitive type (`string`, `code`, `markdown`, …) a field holds, from the models' annotations
    (`List[Annotated[str, String()] | None] | None`); None for a complex type."""
    stack = [annotation]
    while stack:
        hint = stack.pop()
        for meta in getattr(hint, "__metadata__", ()):  # Annotated[...]
            name = getattr(meta, "__visit_name__", None)
            if isinstance(name, str):
                return name
        stack.extend(typing.get_args(hint))
    return None


def _check_elements(model: BaseModel, path: str, limits: ElementLimits, issues: list[Issue],
                    too_long: list[Issue]) -> None:
    """Codes of required bindings and the length of each text value, in one walk of the validated model."""
    for attr, json_name, allowed, kind in _plan(type(model)):
        value = getattr(model, attr, None)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                _check_elements(item, _item_path(path, json_name, value, i), limits, issues, too_long)
            elif not isinstance(item, str):
                continue
            elif (limit := limits.of(kind)) is not None and len(item) > limit:
                if len(too_long) < _MAX_SHAPE_ISSUES:
                    item_path = _item_path(path, json_name, value, i)
                    too_long.append(Issue("too-long", f"{item_path} is {len(item):,} characters long; it may be at "
                                                      f"most {limit:,} (the limit)", expression=(item_path,)))
            elif allowed is not None and item not in allowed:
                item_path = _item_path(path, json_name, value, i)
                shown = sorted(allowed)
                codes = ", ".join(shown[:20]) + (", …" if len(shown) > 20 else "")
                issues.append(Issue(
                    "code-invalid",
                    f"{item_path}: '{item}' is not a code of the required value set ({codes})",
                    expression=(item_path,),
                ))


def _item_path(path: str, json_name: str, value: Any, i: int) -> str:
    return f"{path}.{json_name}" + (f"[{i}]" if isinstance(value, list) else "")


def nfc_resource(resource: dict[str, Any]) -> dict[str, Any]:
    """`nfc_json` of a resource, typed as one."""
    normalised: dict[str, Any] = nfc_json(resource)
    return normalised
