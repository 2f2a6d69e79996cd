"""The layer rules of docs/architecture.md, checked with import-linter (CI runs this).

Data flows one way: HTTP and CLI (`emr`) → the rooms built on the store (`security`,
`referral`, `printing`, `imaging`) → the store's public face (`fhir_store`) → its private modules →
MongoDB. The rules are written for every room, built or to come; a rule takes effect
as soon as its package exists, so a new room is checked from its first commit.

    python scripts/check_layers.py [--root DIR]     exit 1 when a rule is broken
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: Top-level packages of the project, in layer order (later ones may not import earlier ones).
ROOMS = ("emr", "security", "referral", "printing", "imaging", "fhir_store")
#: Packages built on the store, which must not reach back into the application.
BUILT_ON_STORE = ("security", "referral", "printing", "imaging")
#: Web frameworks and servers: only `emr` serves HTTP.
WEB = ("fastapi", "starlette", "uvicorn")


def rules(present: set[str]) -> list[dict[str, object]]:
    """The import-linter contracts for the packages `present`."""
    contracts: list[dict[str, object]] = [{
        "name": "fhir_store knows nothing of HTTP, the CLI, the application or the rooms built on it",
        "type": "forbidden", "source_modules": ["fhir_store"],
        "forbidden_modules": [*WEB, "typer", "httpx", *(r for r in ROOMS if r != "fhir_store" and r in present)],
    }]
    for room in ("emr", *BUILT_ON_STORE):
        if room not in present:
            continue
        contracts.append({
            "name": f"{room} uses fhir_store's public face only, never its private modules",
            "type": "forbidden", "source_modules": [room], "forbidden_modules": ["fhir_store.*", "fhir_store.**"],
            "allow_indirect_imports": "true",
        })
    for room in BUILT_ON_STORE:
        if room not in present:
            continue
        contracts.append({"name": f"{room} does not import the application (emr) or a web framework",
                          "type": "forbidden", "source_modules": [room], "forbidden_modules": ["emr", *WEB]})
        if "emr" in present:
            contracts.append({
                "name": f"emr uses {room}'s public face only", "type": "forbidden", "source_modules": ["emr"],
                "forbidden_modules": [f"{room}.*", f"{room}.**"], "allow_indirect_imports": "true"})
        for other in BUILT_ON_STORE:
            if other != room and other in present:
                contracts.append({
                    "name": f"{room} uses {other}'s public face only", "type": "forbidden",
                    "source_modules": [room], "forbidden_modules": [f"{other}.*", f"{other}.**"],
                    "allow_indirect_imports": "true",
                })
    return contracts


def config(present: set[str]) -> str:
    """An import-linter INI file holding the contracts."""
    lines = ["[importlinter]", "root_packages =", *(f"    {p}" for p in sorted(present)),
             "include_external_packages = True", ""]
    for i, contract in enumerate(rules(present)):
        lines.append(f"[importlinter:contract:{i + 1}]")
        for key, value in contract.items():
            if isinstance(value, list):
                lines += [f"{key} =", *(f"    {v}" for v in value)]
            else:
                lines.append(f"{key} = {value}")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the project folder holding the packages (default: this checkout)")
    args = parser.parse_args()
    root = args.root.resolve()
    present = {room for room in ROOMS if (root / room / "__init__.py").is_file()}
    with tempfile.TemporaryDirectory() as tmp:
        ini = Path(tmp) / "layers.ini"
        ini.write_text(config(present), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        lint = Path(sys.executable).with_name("lint-imports")
        done = subprocess.run([str(lint), "--no-logo", "--no-cache", str(ini)], cwd=root, env=env, check=False)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
