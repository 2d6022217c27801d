"""Launch a federation run on a deployed SuperLink and turn its outcome into the report.

The run goes through Flower's Control API (``flwr run``), as an operator would start it:
the app bundle is built from this project, the settings travel as ``--run-config`` (the
keys of ``[tool.flwr.app.config]``), and the ServerApp writes ``history.json`` and the
model into ``out-dir`` on the coordinator. The report is built from that history exactly as
for a simulated federation, without baselines: the coordinator holds no data to train them.

A run is resumed (``oralfed federation resume``) by launching it again into its own run
folder with the checkpointed settings: the ServerApp finds the folder's checkpoint and
continues (``oralfed.server.checkpoint``), and ``history.json`` covers every round.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oralfed.deploy.errors import DeployedQueryError
from oralfed.deploy.federation_dir import FederationConfig, FederationPaths
from oralfed.deploy.flwr_cli import flwr_cli
from oralfed.deploy.processes import flower_environment, venv_executable
from oralfed.schemas.files import write_json_atomically, write_text_atomically
from oralfed.schemas.settings import FederationSettings
from oralfed.server.app import GLOBAL_MODEL_FILE, HISTORY_FILE
from oralfed.server.insights import ANSWER_FILE, QuerySettings
from oralfed.server.report import REPORT_FILE, build_run_report
from oralfed.server.strategy import NO_REPLY

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIG_FILE = "run-config.toml"
RUN_ID_PATTERN = re.compile(r"run_id `?(?P<run_id>\d+)`?")
FAILURE_PATTERN = re.compile(r"(FederationHalted|Error|Exception)[:(].*")


@dataclass
class LaunchResult:
    run_id: str | None
    status: str  # completed, failed, stopped
    message: str | None
    report: dict[str, Any]


def write_run_config(path: Path, values: dict[str, Any]) -> Path:
    """A TOML file for ``--run-config`` (JSON scalars are valid TOML scalars)."""
    lines = (f"{key} = {json.dumps(value)}\n" for key, value in values.items())
    write_text_atomically(path, "".join(lines))
    return path


def launch_run(
    fed_dir: Path,
    settings: FederationSettings,
    on_line: Callable[[str], None],
    app_dir: Path = PROJECT_ROOT,
) -> LaunchResult:
    """Start a run with ``flwr run --stream``, pass each log line to ``on_line`` while it runs,
    and return its outcome with the report (also written to ``out-dir/report.json``)."""
    assert settings.out_dir is not None, "a deployed run needs an out-dir on the coordinator"
    config_file = write_run_config(settings.out_dir / RUN_CONFIG_FILE, settings.run_config())
    run_id, failure = stream_run(fed_dir, app_dir, on_line, "--run-config", str(config_file))
    status = run_status(fed_dir, run_id) if run_id else "failed"
    if status == "completed" and not (settings.out_dir / GLOBAL_MODEL_FILE).is_file():
        status = "failed"
    message = None if status == "completed" else failure or f"the run ended {status}"
    node_names = {
        entry.node_id: entry.name
        for entry in FederationConfig.load(fed_dir).clinics.values()
        if entry.node_id is not None
    }
    report = deployed_report(settings, run_id, status, message, node_names)
    return LaunchResult(run_id, status, message, report)


def stream_run(
    fed_dir: Path, app_dir: Path, on_line: Callable[[str], None], *arguments: str
) -> tuple[str | None, str | None]:
    """``flwr run APP --stream`` against the federation's SuperLink: the run id and the last
    error line seen; returns when the run has ended."""
    command = [venv_executable("flwr"), "run", str(app_dir), "--stream", *arguments]
    run_id, failure = None, None
    with subprocess.Popen(
        command,
        env=flower_environment(FederationPaths(fed_dir).flwr_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=app_dir,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if run_id is None and (match := RUN_ID_PATTERN.search(line)):
                run_id = match["run_id"]
            if match := FAILURE_PATTERN.search(line):
                failure = match.group(0)
            on_line(line)
    return run_id, failure


def deployed_report(
    settings: FederationSettings,
    run_id: str | None,
    status: str,
    message: str | None,
    node_names: dict[int, str] | None = None,
) -> dict[str, Any]:
    """The federation report from the ServerApp's ``history.json`` (no baselines).

    A node that never answered in a run is known to the ServerApp only as ``node-<id>``;
    the federation's registry (``node_names``) puts the clinic's name on it.
    """
    assert settings.out_dir is not None
    history = settings.out_dir / HISTORY_FILE
    rounds = json.loads(history.read_text()) if history.is_file() else []
    _name_unknown_nodes(rounds, node_names or {})
    report = build_run_report(
        run_id=run_id,
        status=status,
        message=message,
        settings=settings.public_dict(),
        rounds=rounds,
    )
    model = settings.out_dir / GLOBAL_MODEL_FILE
    report["model_file"] = str(model) if model.is_file() else None
    report["dropped"] = sorted(
        {
            entry["clinic_id"]
            for summary in rounds
            for entry in summary["clinics"]
            if entry["status"] == "failed" and entry["reason"] == NO_REPLY
        }
    )
    write_json_atomically(settings.out_dir / REPORT_FILE, report)
    return report


def _name_unknown_nodes(rounds: list[dict[str, Any]], node_names: dict[int, str]) -> None:
    names = {f"node-{node_id}": name for node_id, name in node_names.items()}
    for summary in rounds:
        for entry in summary["clinics"]:
            entry["clinic_id"] = names.get(entry["clinic_id"], entry["clinic_id"])
        for failed in summary["failed"]:
            failed["clinic"] = names.get(failed["clinic"], failed["clinic"])


def list_runs(fed_dir: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """Runs known to the SuperLink (``flwr ls``): id, app, status, times."""
    arguments = ["ls", "--format", "json"]
    if run_id is not None:
        arguments += ["--run-id", run_id]
    return list(flwr_cli(FederationPaths(fed_dir), *arguments).get("runs", []))


def run_status(fed_dir: Path, run_id: str) -> str:
    """``completed``, ``failed``, ``stopped`` (finished runs) or Flower's live status."""
    runs = list_runs(fed_dir, run_id)
    status = str(runs[0]["status"]) if runs else "unknown"
    return status.rsplit(":", 1)[-1]


def stop_run(fed_dir: Path, run_id: str) -> None:
    flwr_cli(FederationPaths(fed_dir), "stop", run_id, "--format", "json")


def launch_query(
    fed_dir: Path,
    settings: QuerySettings,
    on_line: Callable[[str], None],
    app_dir: Path = PROJECT_ROOT,
) -> dict[str, Any]:
    """Ask the deployed clinics one insight query through ``flwr run``; returns the answer
    the ServerApp wrote to ``<out-dir>/answer.json``."""
    assert settings.out_dir is not None, "a deployed query needs an out-dir on the coordinator"
    out_dir = Path(settings.out_dir)
    config_file = write_run_config(out_dir / RUN_CONFIG_FILE, settings.run_config())
    run_id, failure = stream_run(fed_dir, app_dir, on_line, "--run-config", str(config_file))
    answer_path = out_dir / ANSWER_FILE
    if not answer_path.is_file():
        status = run_status(fed_dir, run_id) if run_id else "failed"
        raise DeployedQueryError(failure or f"the query run ended {status} without an answer")
    return dict(json.loads(answer_path.read_text()))
