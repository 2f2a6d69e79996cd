"""The README's Quickstart examples, run as the newcomer runs them: pasted in order, against a fresh server.

The shell block is read from README.md itself (the one after the marker comment),
so README and test cannot drift. Only the address (a free port instead of 8080)
and the path of the `emr` command differ; the password is typed on standard
input, as at a terminal.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import LiveServer, make_settings

REPO = Path(__file__).resolve().parent.parent
MARKER = "<!-- The block below runs as one shell script in tests/test_readme.py"
PASSWORD = "quickstart-password-42"


def readme_script() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text[text.index(MARKER):], re.S)
    assert block is not None, "the README lost its example block"
    return block.group(1)


def test_the_readme_examples_run_in_order_from_a_clone(mongo_uri: str) -> None:
    settings = make_settings(mongo_uri)
    with LiveServer(settings) as live:
        emr = Path(sys.executable).parent / "emr"
        script = readme_script().replace("http://127.0.0.1:8080", live.url).replace(".venv/bin/emr", str(emr))
        env = {**os.environ, "EMR_MONGODB_URI": mongo_uri, "EMR_DATABASE": settings.database,
               "EMR_DATA_DIR": str(settings.data_dir), "EMR_SECRET_KEY": str(settings.secret_key)}
        # Every curl must succeed (an HTTP error fails the script), as a reader would notice.
        prelude = 'set -euo pipefail\ncurl() { command curl --show-error --fail-with-body "$@"; echo; }\n'
        run = subprocess.run(["bash", "-c", prelude + script], input=f"{PASSWORD}\n{PASSWORD}\n", cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"README examples failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        out = run.stdout
        patient_id = re.search(r"created Patient/([A-Za-z0-9.-]+)", out)
        assert patient_id, out[-2000:]
        pid = patient_id.group(1)
        with live.client() as fhir:
            # one patient with that citizen ID: the conditional create and the transaction found it
            same = fhir.get("/Patient", params={"identifier": "http://fhir.hl7.org.vn/core/sid/cccd|089190000001"})
            assert [e["resource"]["id"] for e in same.json()["entry"]] == [pid]
            chart = fhir.get("/Observation", params={"patient": pid, "_sort": "-date",
                                                     "_include": "Observation:encounter"}).json()
        modes = [e["search"]["mode"] for e in chart["entry"]]
        assert modes.count("match") == 2 and modes.count("include") == 1
        assert '"value":6.10' in out.replace(" ", "")  # the glucose result kept as written
        assert "I10" in out and "Pneumonia" in out  # the type-ahead and the English title
        assert json.loads(out.strip().splitlines()[-1])["resourceType"] == "CapabilityStatement"
