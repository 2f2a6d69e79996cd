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
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from fhir_store.errors import InvalidResource, Issue, UnknownResourceType
from fhir_store.resource_types import model_class
from fhir_store.text import nfc

# Per model class: (attribute name, JSON name, allowed codes or None) of each element field.
_FieldPlan = tuple[tuple[str, str, frozenset[str] | None], ...]
_plans: dict[type[BaseModel], _FieldPlan] = {}


def validate_resource(data: Any, *, expected_type: str | None = None) -> dict[str, Any]:
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
    resource = nfc_resource(data)
    try:
        model = cls.model_validate(resource)
    except ValidationError as exc:
        issues = [_issue_from_pydantic(resource_type, err) for err in exc.errors()]
        raise InvalidResource(f"{resource_type} failed validation: {issues[0].diagnostics}", issues) from None
    issues = []
    _check_required_codes(model, resource_type, issues)
    if issues:
        raise InvalidResource(f"{resource_type} failed validation: {issues[0].diagnostics}", issues)
    return resource


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
        entries = []
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if not extra.get("element_property") or name.endswith("__ext"):
                continue
            entries.append((name, info.alias or name, bindings.get(f"{cls.__name__}.{name}")))
        plan = _plans[cls] = tuple(entries)
    return plan


def _check_required_codes(model: BaseModel, path: str, issues: list[Issue]) -> None:
    for attr, json_name, allowed in _plan(type(model)):
        value = getattr(model, attr, None)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            item_path = f"{path}.{json_name}" + (f"[{i}]" if isinstance(value, list) else "")
            if isinstance(item, BaseModel):
                _check_required_codes(item, item_path, issues)
            elif allowed is not None and isinstance(item, str) and item not in allowed:
                shown = sorted(allowed)
                codes = ", ".join(shown[:20]) + (", …" if len(shown) > 20 else "")
                issues.append(Issue(
                    "code-invalid",
                    f"{item_path}: '{item}' is not a code of the required value set ({codes})",
                    expression=(item_path,),
                ))


def nfc_resource(resource: dict[str, Any]) -> dict[str, Any]:
    """`nfc_json` of a resource, typed as one."""
    normalised: dict[str, Any] = nfc_json(resource)
    return normalised
