"""Index values of every search parameter, extracted from a resource at write time.

For each parameter with a value the current-version document gets:
- `ix[code]`: the values queries match, normalised per parameter type
  (folded word-suffixes for strings, `system|code` tokens, `Type/id`
  references, `{lo, hi}` UTC ranges for dates, numbers, quantities);
- helper lists for modifiers: `ix["code:exact"]`, `ix["code:text"]`,
  `ix["code:identifier"]`, `ix["code:of-type"]`;
- `sk[code]`: one scalar sort key, so `_sort` and keyset paging are index-friendly.

Every value is bounded, whatever the resource holds: string index values and
sort keys keep their first `INDEXED_CHARS`, an `:exact` value longer than
`_MAX_EXACT_CHARS` is kept as its start and a digest (still exact, see
`exact_value`), and the whole index may take at most `MAX_INDEX_BYTES`, so a
5 MB name or a resource of thousands of distinct names cannot push its
MongoDB document past 16 MiB (413 instead).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

import bson

from fhir_store.errors import PayloadTooLarge
from fhir_store.search.dates import MAX, MIN, parse_range
from fhir_store.search.paths import Leaf
from fhir_store.search.registry import Registry, SearchParam
from fhir_store.text import fold

# A string is indexed from each of its first words on, so "van binh" finds "Trần Văn Bình".
_MAX_SUFFIX_WORDS = 8
#: How much of each text the index keeps (suffixes and sort keys).
INDEXED_CHARS = 200
#: `:exact` values up to this length are kept as they are; longer ones as their start and a digest.
_MAX_EXACT_CHARS = 1024
#: The most a resource's search index (`ix` and `sk`) may take, as BSON: a resource may be 12 MiB
#: (`validation.MAX_RESOURCE_BYTES`) and a MongoDB document 16 MiB.
MAX_INDEX_BYTES = 3 * 1024 * 1024 + 512 * 1024
_QUANTITY_TYPES = {"Quantity", "Age", "Duration", "Money", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"}
_NUMBER_TYPES = {"decimal", "integer", "positiveInt", "unsignedInt", "integer64"}
_NOT_DIGIT = re.compile(r"\D")
#: The helper lists a parameter may add beside `ix[code]`.
_HELPERS = ("exact", "text", "identifier", "of-type")


def extract(registry: Registry, resource: dict[str, Any]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    ix: dict[str, list[Any]] = {}
    sk: dict[str, Any] = {}
    estimate = 0
    for param in registry.params(resource["resourceType"]).values():
        if param.computed == "deceased":
            flag = bool(resource.get("deceasedDateTime")) or resource.get("deceasedBoolean") is True
            _put(ix, sk, param.code, ["true" if flag else "false"], "true" if flag else "false")
            continue
        if not param.leaves or param.type == "special":
            continue
        nodes = [(leaf, node) for leaf in param.leaves for node in leaf.evaluate(resource)]
        if nodes:
            _EXTRACTORS[param.type](param, nodes, ix, sk)
            # A cheap running estimate (the texts' length) stops a hostile resource early; BSON decides below.
            estimate += sum(len(v) if isinstance(v, str) else 32
                            for key in (param.code, *(f"{param.code}:{helper}" for helper in _HELPERS))
                            for v in ix.get(key, ()))
            if estimate > MAX_INDEX_BYTES:
                _check_budget(resource, ix, sk)
    _check_budget(resource, ix, sk)
    return ix, sk


def _check_budget(resource: dict[str, Any], ix: dict[str, list[Any]], sk: dict[str, Any]) -> None:
    """Refuse (413) a search index larger than MAX_INDEX_BYTES as BSON."""
    size = len(bson.encode({"ix": ix, "sk": sk}))
    if size > MAX_INDEX_BYTES:
        rtype = resource.get("resourceType")
        raise PayloadTooLarge(f"The search index of this {rtype} would take {size:,} bytes; a resource's index "
                              f"may take at most {MAX_INDEX_BYTES:,} (the limit): it has too many distinct "
                              "searchable values")


def exact_value(text: str) -> str:
    """What `:exact` matches: the text itself or, when longer than `_MAX_EXACT_CHARS`, its start and a SHA-256
    of it all, so the index stays bounded and the match stays exact. Search values go through it too."""
    if len(text) <= _MAX_EXACT_CHARS:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text[:INDEXED_CHARS]}…sha256:{digest}"


def _put(ix: dict[str, list[Any]], sk: dict[str, Any], key: str, values: list[Any], sort_key: Any = None) -> None:
    unique: list[Any] = []
    seen: set[Any] = set()
    for v in values:  # in order, each once: a set of keys, so ten thousand values cost no more than ten
        k = _hashable(v)
        if k not in seen:
            seen.add(k)
            unique.append(v)
    if unique:
        ix[key] = unique
        if sort_key is not None and key not in sk:
            sk[key] = sort_key[:INDEXED_CHARS] if isinstance(sort_key, str) else sort_key


def _hashable(value: Any) -> Any:
    """An index value as a set key: ranges, quantities and composites are dicts (of lists, for composites)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


# ---- string -----------------------------------------------------------------------------

def string_parts(datatype: str, node: Any) -> list[str]:
    """The texts a string parameter matches in one element; full names family first."""
    if isinstance(node, str):
        return [node]
    if not isinstance(node, dict):
        return []
    if datatype == "HumanName":
        family, given = node.get("family") or "", list(node.get("given") or [])
        parts = [p for p in [family, *given, *(node.get("prefix") or []), *(node.get("suffix") or [])] if p]
        if family and given:
            parts += [" ".join([family, *given]), " ".join([*given, family])]
        if node.get("text"):
            parts.append(node["text"])
        return parts
    if datatype == "Address":
        keys = ("city", "district", "state", "postalCode", "country", "text")
        return [*(node.get("line") or []), *(node[k] for k in keys if node.get(k))]
    return [v for k, v in node.items() if k in ("text", "display", "value") and isinstance(v, str)]


def folded_suffixes(text: str) -> list[str]:
    words = fold(text).split()
    # Each word is at least one character: the next INDEXED_CHARS words are all a suffix can keep.
    return [" ".join(words[i:i + INDEXED_CHARS])[:INDEXED_CHARS]
            for i in range(min(len(words), _MAX_SUFFIX_WORDS))]


def _string(param: SearchParam, nodes: list[tuple[Leaf, Any]], ix: dict[str, list[Any]], sk: dict[str, Any]) -> None:
    texts = [t for leaf, node in nodes for t in string_parts(leaf.datatype, node)]
    if not texts:
        return
    leaf, node = nodes[0]
    first = node if isinstance(node, dict) else {}
    # Sort by the name as a Vietnamese desk reads it: family name first.
    sort_text = " ".join([first.get("family") or "", *(first.get("given") or [])]).strip() \
        if leaf.datatype == "HumanName" else ""
    _put(ix, sk, param.code, [s for t in texts for s in folded_suffixes(t)], fold(sort_text or texts[0]))
    _put(ix, sk, f"{param.code}:exact", [exact_value(t) for t in texts])


# ---- token ------------------------------------------------------------------------------

def token_values(system: str | None, code: str | None) -> list[str]:
    """`system|code` and bare `code` (or `|code` when there is no system): one lookup per token form."""
    if not code:
        return [f"{system}|"] if system else []
    return [f"{system}|{code}", code] if system else [f"|{code}", code]


def _token(param: SearchParam, nodes: list[tuple[Leaf, Any]], ix: dict[str, list[Any]], sk: dict[str, Any]) -> None:
    values: list[str] = []
    texts: list[str] = []
    of_type: list[str] = []
    for leaf, node in nodes:
        dt = leaf.datatype
        if isinstance(node, bool):
            values += token_values(None, "true" if node else "false")
        elif isinstance(node, str | int | float):
            values += token_values(None, str(node))
        elif not isinstance(node, dict):
            continue
        elif dt == "CodeableConcept":
            for coding in node.get("coding") or []:
                values += token_values(coding.get("system"), coding.get("code"))
                texts += [coding["display"]] if coding.get("display") else []
            texts += [node["text"]] if node.get("text") else []
        elif dt == "Coding":
            values += token_values(node.get("system"), node.get("code"))
            texts += [node["display"]] if node.get("display") else []
        elif dt == "Identifier":
            values += token_values(node.get("system"), node.get("value"))
            ident_type = node.get("type") or {}
            for coding in ident_type.get("coding") or []:
                of_type.append(f"{coding.get('system', '')}|{coding.get('code', '')}|{node.get('value', '')}")
            texts += [ident_type["text"]] if ident_type.get("text") else []
        elif dt == "ContactPoint":
            value = node.get("value")
            if value:
                values += token_values(node.get("system"), value)
                digits = _NOT_DIGIT.sub("", value)
                if digits and digits != value:
                    values.append(digits)
        elif "code" in node or "value" in node:
            values += token_values(node.get("system"), node.get("code") or node.get("value"))
    codes = [v for v in values if "|" not in v]
    _put(ix, sk, param.code, values, codes[0] if codes else None)
    _put(ix, sk, f"{param.code}:text", [f for t in texts for f in folded_suffixes(t)])
    _put(ix, sk, f"{param.code}:of-type", of_type)


# ---- reference --------------------------------------------------------------------------

def normalise_reference(reference: str) -> str:
    """Relative references lose a `_history/n` tail; absolute ones stay as written."""
    parts = reference.strip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return "/".join(parts) if not reference.startswith(("http://", "https://", "urn:")) else reference


def _reference(param: SearchParam, nodes: list[tuple[Leaf, Any]], ix: dict[str, list[Any]],
               sk: dict[str, Any]) -> None:
    refs: list[str] = []
    identifiers: list[str] = []
    for _leaf, node in nodes:
        if isinstance(node, str):  # canonical / uri
            refs.append(node)
            if "|" in node:
                refs.append(node.split("|", 1)[0])
        elif isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and ref and not ref.startswith("#"):
                refs.append(normalise_reference(ref))
            ident = node.get("identifier")
            if isinstance(ident, dict):
                identifiers += token_values(ident.get("system"), ident.get("value"))
    _put(ix, sk, param.code, refs, refs[0] if refs else None)
    _put(ix, sk, f"{param.code}:identifier", identifiers)


# ---- date -------------------------------------------------------------------------------

def date_ranges(datatype: str, node: Any) -> list[tuple[datetime, datetime]]:
    try:
        if isinstance(node, str):
            return [parse_range(node)]
        if not isinstance(node, dict):
            return []
        if datatype == "Period":
            lo = parse_range(node["start"])[0] if node.get("start") else MIN
            hi = parse_range(node["end"])[1] if node.get("end") else MAX
            return [(lo, hi)] if node.get("start") or node.get("end") else []
        if datatype == "Timing":
            ranges = [parse_range(e) for e in node.get("event") or []]
            bounds = (node.get("repeat") or {}).get("boundsPeriod")
            return ranges + (date_ranges("Period", bounds) if bounds else [])
    except ValueError:
        return []  # validation already accepted it; an odd form is simply not searchable
    return []


def _date(param: SearchParam, nodes: list[tuple[Leaf, Any]], ix: dict[str, list[Any]], sk: dict[str, Any]) -> None:
    ranges = [r for leaf, node in nodes for r in date_ranges(leaf.datatype, node)]
    if ranges:
        _put(ix, sk, param.code, [{"lo": lo, "hi": hi} for lo, hi in ranges], min(lo for lo, _ in ranges))


# ---- number, quantity -------------------------------------------------------------------

def _number(param: SearchParam, nodes: list[tuple[Leaf, Any]], ix: dict[str, list[Any]], sk: dict[str, Any]) -> None:
    values = [float(n) for _leaf, n in nodes if isinstance(n, int | float) and not isinstance(n, bool)]
    if values:
        _put(ix, sk, param.code, values, min(values))


def quantity_entries(datatype: str, node: Any) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return []
    if datatype == "Range":
        low, high = node.get("low") or {}, node.get("high") or {}
        unit = low or high
        if low.get("value") is None and high.get("value") is None:
            return []
        return [{"lo": float(low.get("value", -1e308)), "hi": float(high.get("value", 1e308)),
                 "s": unit.get("system"), "c": unit.get("code") or unit.get("unit")}]
    if datatype in _QUANTITY_TYPES and isinstance(node.get("value"), int | float):
        value = float(node["value"])
        return [{"lo": value, "hi": value, "s": node.get("system") or (node.get("currency") and "urn:iso:std:iso:4217"),
                 "c": node.get("code") or node.get("unit") or node.get("currency"), "u": node.get("unit")}]
    return []


def _quantity(param: SearchParam, nodes: list[tuple[Leaf, Any]], ix: dict[str, list[Any]],
              sk: dict[str, Any]) -> None:
    entries = [e for leaf, node in nodes for e in quantity_entries(leaf.datatype, node)]
    if entries:
        _put(ix, sk, param.code, entries, min(e["lo"] for e in entries))


# ---- uri, composite ---------------------------------------------------------------------

def _uri(param: SearchParam, nodes: list[tuple[Leaf, Any]], ix: dict[str, list[Any]], sk: dict[str, Any]) -> None:
    values = [n for _leaf, n in nodes if isinstance(n, str)]
    if values:
        _put(ix, sk, param.code, values, values[0])


def _composite(param: SearchParam, nodes: list[tuple[Leaf, Any]], ix: dict[str, list[Any]],
               sk: dict[str, Any]) -> None:
    entries = []
    for _leaf, base in nodes:
        entry: dict[str, Any] = {}
        for i, component in enumerate(param.components):
            sub_ix: dict[str, list[Any]] = {}
            sub_nodes = [(leaf, n) for leaf in component.leaves for n in leaf.evaluate(base)]
            fake = SearchParam(code="v", type=component.param_type, url="", expression="", leaves=component.leaves)
            _EXTRACTORS[component.param_type](fake, sub_nodes, sub_ix, {})
            if "v" not in sub_ix:
                break
            entry[str(i)] = sub_ix["v"]
        else:
            entries.append(entry)
    _put(ix, sk, param.code, entries)


_EXTRACTORS = {
    "string": _string,
    "token": _token,
    "reference": _reference,
    "date": _date,
    "number": _number,
    "quantity": _quantity,
    "uri": _uri,
    "composite": _composite,
}
