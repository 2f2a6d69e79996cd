"""Build the spec tables in fhir_store/spec/ from the FHIR R4B core package.

- required_bindings.json: the codes of every required binding on a `code` element;
- compartments.json: the CompartmentDefinitions (which parameters put a resource in
  a patient's, encounter's, ... compartment), for compartment search and $everything;
- coded_bindings.json: the value set of every required binding on a Coding or CodeableConcept
  element of a resource, by element path, checked on write by the terminology service;
- ../terminology/data/fhir-r4b-required.json.gz: a gzip-compressed FHIR Bundle
  (type collection) of every ValueSet a required binding of a resource or
  complex type points to (on code, Coding and CodeableConcept elements alike),
  every ValueSet those import, and every CodeSystem of the package that they
  name, with the `text` narrative dropped; it is byte-for-byte reproducible.

The `fhir.resources` models carry `enum_values` parsed from element titles, and
those are incomplete ("registered | preliminary | final | amended +" leaves out
`cancelled`) or wrong (`CapabilityStatement.format`). The spec's own
StructureDefinitions and value sets are the truth, so we expand every required
binding we can expand locally and key it by the model's class and field name.

Usage: npm pack hl7.fhir.r4b.core@4.3.0 && tar xzf hl7.fhir.r4b.core-4.3.0.tgz
       python scripts/build_spec_tables.py package/
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

from fhir_store.resource_types import resource_types

SPEC = Path(__file__).resolve().parent.parent / "fhir_store" / "spec"
OUT = SPEC / "required_bindings.json"
TERMINOLOGY = SPEC.parent / "terminology" / "data" / "fhir-r4b-required.json.gz"
MAX_RESOURCE_BYTES = 2 * 1024 * 1024


def load(folder: Path, prefix: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{prefix}-*.json"))]


def concept_codes(concepts: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in concepts:
        out.append(c["code"])
        out += concept_codes(c.get("concept", []))
    return out


def expand(vs: dict[str, Any], code_systems: dict[str, dict[str, Any]],
           value_sets: dict[str, dict[str, Any]]) -> set[str] | None:
    """All codes of a value set, or None where it cannot be enumerated here (filters, external systems)."""
    codes: set[str] = set()
    compose = vs.get("compose", {})
    if compose.get("exclude"):
        return None
    for inc in compose.get("include", []):
        if inc.get("filter"):
            return None
        if inc.get("concept"):
            codes |= {c["code"] for c in inc["concept"]}
        elif inc.get("system"):
            cs = code_systems.get(inc["system"])
            if cs is None or cs.get("content") != "complete":
                return None
            codes |= set(concept_codes(cs.get("concept", [])))
        for ref in inc.get("valueSet", []):
            sub = value_sets.get(ref.split("|")[0])
            sub_codes = expand(sub, code_systems, value_sets) if sub else None
            if sub_codes is None:
                return None
            codes |= sub_codes
    return codes or None


def class_names() -> dict[str, type]:
    """Every model class reachable in fhir.resources.R4B, by name."""
    import importlib
    import pkgutil

    import fhir.resources.R4B as r4b

    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(r4b.__path__):
        module = importlib.import_module(f"{r4b.__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and hasattr(obj, "model_fields") and obj.__module__ == module.__name__:
                found[obj.__name__] = obj
    return found


def main(folder: Path) -> None:
    code_systems = {cs["url"]: cs for cs in load(folder, "CodeSystem")}
    value_sets = {vs["url"]: vs for vs in load(folder, "ValueSet")}
    classes = class_names()
    resource_types()  # make sure every resource module is imported
    table: dict[str, list[str]] = {}
    skipped: list[str] = []
    for sd in load(folder, "StructureDefinition"):
        if sd.get("derivation") != "specialization" or sd.get("kind") not in ("resource", "complex-type"):
            continue
        for el in sd["snapshot"]["element"]:
            binding = el.get("binding", {})
            if binding.get("strength") != "required" or "valueSet" not in binding:
                continue
            vs = value_sets.get(binding["valueSet"].split("|")[0])
            codes = expand(vs, code_systems, value_sets) if vs else None
            parts = el["path"].split(".")
            field = parts[-1].removesuffix("[x]")
            owner = "".join(p[0].upper() + p[1:] for p in parts[:-1])
            cls = classes.get(owner)
            if codes is None or cls is None or field not in cls.model_fields:
                skipped.append(f"{el['path']} ({binding['valueSet']})")
                continue
            # Only plain code elements: a Coding/CodeableConcept binding is checked by terminology later.
            if not any(t.get("code") == "code" for t in el.get("type", [])):
                continue
            table[f"{owner}.{field}"] = sorted(codes)
    OUT.write_text(json.dumps({
        "source": "hl7.fhir.r4b.core 4.3.0 (npm), CC0-1.0",
        "bindings": dict(sorted(table.items())),
        "not_enforced": sorted(skipped),
    }, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(table)} required code bindings written to {OUT}; {len(skipped)} not expandable here")


def compartments(folder: Path) -> None:
    table: dict[str, dict[str, list[str]]] = {}
    for cd in load(folder, "CompartmentDefinition"):
        table[cd["code"]] = {r["code"]: r["param"] for r in cd.get("resource", []) if r.get("param")}
    (SPEC / "compartments.json").write_text(json.dumps({
        "source": "hl7.fhir.r4b.core 4.3.0 (npm), CC0-1.0",
        "compartments": table,
    }, indent=1) + "\n")
    print(f"{len(table)} compartment definitions written")


def required_terminology(folder: Path) -> None:
    """Write the value sets of the spec's required bindings, and their code systems, as one Bundle."""
    from fhir_store.errors import InvalidResource
    from fhir_store.validation import validate_resource

    code_systems = {cs["url"]: cs for cs in load(folder, "CodeSystem")}
    value_sets = {vs["url"]: vs for vs in load(folder, "ValueSet")}

    bound: set[str] = set()
    for sd in load(folder, "StructureDefinition"):
        if sd.get("derivation") != "specialization" or sd.get("kind") not in ("resource", "complex-type"):
            continue
        for el in sd["snapshot"]["element"]:
            binding = el.get("binding", {})
            if binding.get("strength") == "required" and "valueSet" in binding:
                bound.add(binding["valueSet"].split("|")[0])

    # Close over compose.include/exclude[].valueSet; collect the systems they name.
    wanted_vs: set[str] = set()
    missing_vs: set[str] = set()
    systems: set[str] = set()
    todo = sorted(bound)
    while todo:
        url = todo.pop()
        if url in wanted_vs or url in missing_vs:
            continue
        vs = value_sets.get(url)
        if vs is None:
            missing_vs.add(url)
            continue
        wanted_vs.add(url)
        compose = vs.get("compose", {})
        for part in compose.get("include", []) + compose.get("exclude", []):
            if part.get("system"):
                systems.add(part["system"].split("|")[0])
            todo += [ref.split("|")[0] for ref in part.get("valueSet", [])]
    wanted_cs = {url for url in systems if url in code_systems}

    resources = [value_sets[url] for url in wanted_vs] + [code_systems[url] for url in wanted_cs]
    resources = [{k: v for k, v in r.items() if k != "text"} for r in resources]
    resources.sort(key=lambda r: (r["resourceType"], r["url"]))

    kept: list[dict[str, Any]] = []
    left_out: list[str] = []
    seen_ids: set[tuple[str, str]] = set()
    for r in resources:
        name = f"{r['resourceType']}/{r['id']} ({r['url']})"
        size = len(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode())
        key = (r["resourceType"], r["id"])
        try:
            validate_resource(r)
        except InvalidResource as exc:
            left_out.append(f"{name}: " + "; ".join(i.diagnostics for i in exc.issues))
            continue
        if key in seen_ids:
            left_out.append(f"{name}: duplicate id")
            continue
        if size > MAX_RESOURCE_BYTES:
            left_out.append(f"{name}: {size} bytes of JSON")
            continue
        seen_ids.add(key)
        kept.append(r)

    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in kept]}
    raw = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
    TERMINOLOGY.parent.mkdir(parents=True, exist_ok=True)
    TERMINOLOGY.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    n_vs = sum(r["resourceType"] == "ValueSet" for r in kept)
    print(f"{n_vs} ValueSets and {len(kept) - n_vs} CodeSystems written to {TERMINOLOGY} "
          f"({TERMINOLOGY.stat().st_size} bytes, {len(raw)} uncompressed) from {len(bound)} required bindings")
    if missing_vs:
        print(f"{len(missing_vs)} bound or imported value sets are not in the package: {', '.join(sorted(missing_vs))}")
    for line in left_out:
        print(f"left out: {line}")


def coded_bindings(folder: Path) -> None:
    """Required bindings on Coding / CodeableConcept elements of resources, by element path."""
    table: dict[str, str] = {}
    for sd in load(folder, "StructureDefinition"):
        if sd.get("derivation") != "specialization" or sd.get("kind") != "resource":
            continue
        for el in sd["snapshot"]["element"]:
            binding = el.get("binding", {})
            types = {t.get("code") for t in el.get("type", [])}
            if binding.get("strength") == "required" and "valueSet" in binding \
                    and types & {"Coding", "CodeableConcept"}:
                table[el["path"]] = binding["valueSet"].split("|")[0]
    (SPEC / "coded_bindings.json").write_text(json.dumps({
        "source": "hl7.fhir.r4b.core 4.3.0 (npm), CC0-1.0",
        "bindings": dict(sorted(table.items())),
    }, indent=1) + "\n")
    print(f"{len(table)} required Coding/CodeableConcept bindings written")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    compartments(Path(sys.argv[1]))
    coded_bindings(Path(sys.argv[1]))
    required_terminology(Path(sys.argv[1]))
