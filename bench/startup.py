"""How long the `emr` command takes to start: `--help`, light commands, and `emr serve` until it answers.

IT staff feel start-up on every command. This times, as whole processes (wall clock, median
of `--repeat` runs):
- `emr --help`, `emr import --help`, `emr terminology list --help`;
- `emr terminology list` against a running database (opens the services, reads the catalog);
- `emr serve` from launch to its first `200` on `/fhir/metadata`, against a running database
  (`EMR_MONGODB_URI` set) and with the embedded database started by the server itself.

    .venv/bin/python bench/startup.py [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import HOST, REPO, environment, free_port, stop_process  # noqa: E402

from emr.embedded_db import ensure_embedded  # noqa: E402

EMR = [sys.executable, "-m", "emr.cli"]
READY_TIMEOUT_S = 120.0


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, timeout=300, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def serve_until_ready(env: dict[str, str]) -> float:
    port = free_port()
    start = time.perf_counter()
    process = subprocess.Popen([*EMR, "serve", "--port", str(port)], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = start + READY_TIMEOUT_S
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"emr serve exited with {process.returncode} before answering")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/fhir/metadata", timeout=5) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.02)
        raise SystemExit("emr serve did not answer within the timeout")
    finally:
        stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (median reported)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        database = ensure_embedded(Path(tmp) / "running-db")
        try:
            env = {**os.environ, "EMR_MONGODB_URI": database.uri, "EMR_DATABASE": "bench_startup",
                   "EMR_DATA_DIR": str(Path(tmp) / "data")}
            commands = {
                "emr --help": [*EMR, "--help"],
                "emr import --help": [*EMR, "import", "--help"],
                "emr terminology list --help": [*EMR, "terminology", "list", "--help"],
                "emr terminology list (running database)": [*EMR, "terminology", "list", "--json"],
            }
            for label, command in commands.items():
                results[label] = statistics.median(timed(command, env) for _ in range(args.repeat))
            results["emr serve until ready (running database)"] = statistics.median(
                serve_until_ready(env) for _ in range(args.repeat))
        finally:
            database.close()
        embedded_env = {k: v for k, v in os.environ.items() if k != "EMR_MONGODB_URI"}
        runs = []
        for i in range(args.repeat):
            runs.append(serve_until_ready({**embedded_env, "EMR_DATA_DIR": str(Path(tmp) / f"embedded-{i}")}))
        results["emr serve until ready (starts the embedded database)"] = statistics.median(runs)

    report: dict[str, Any] = {"command": " ".join([sys.executable, *sys.argv]), "environment": environment(),
                              "repeat": args.repeat, "seconds": results}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"start-up, median of {args.repeat} runs (s)")
    for label, seconds in results.items():
        print(f"  {label:<58} {seconds:6.2f}")


if __name__ == "__main__":
    main()
