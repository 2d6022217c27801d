"""A federation of many simulated clinics: what each client-round costs, next to bare Flower.

In one run, on Flower's Simulation Engine (Ray) on this machine:

* **bare Flower**: ``flwr.simulation.run_simulation`` with a trivial ClientApp that sends the
  model it received straight back, and Flower's FedAvg, on a model of OralFed's size;
* **OralFed**: ``oralfed federate --clinics N --rounds R`` (DP on, defaults otherwise, no
  baselines), optionally sampling ``--clinics-per-round``.

For each: wall time of the whole command, the seconds from the federation's start to its
end (Ray's start included; setup excluded: for OralFed the synthetic files are written and
validated first), the cost per client-round (federation seconds over clinics asked times
rounds; OralFed's clinics also evaluate the final model in the last round, bare Flower's do
not), the peak of the summed RSS of the whole process tree (Ray's daemons and
workers included; shared pages are counted in every process that maps them, so this is an
upper bound) and the share of the federation's seconds the coordinator process spent on
its CPU (the process running the ServerApp and Flower's driver; the clinics run in Ray's
worker processes).

    python bench/scale.py [--sizes 100,1000,1000/100] [--rounds 3] [--write-doc]

A size ``N/K`` asks K of the N clinics each round (``--clinics-per-round K``); a bare ``N``
asks all of them. A row's ratio is to bare Flower asking as many clients per round out of
as many (out of the largest fewer, when bare Flower was not run at that size: say so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchmarks_doc import machine_description, replace_section  # noqa: E402
from oralfed.deploy.simulation import OUTCOME_FILE, SPEC_FILE  # noqa: E402

SECTION = "scale"
QUALITY_CLINICS = 500  # the central pool's subsample of a large federation
SAMPLE_SECONDS = 0.25
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class TreeSample:
    """What the sampler saw of a process tree: its peak summed RSS, and the CPU seconds of
    its coordinator process (the one whose command line holds ``coordinator``; the root
    when that is empty) at the last look."""

    coordinator: str = ""
    peak_rss_kib: int = 0
    coordinator_cpu_seconds: float = 0.0


def _processes() -> dict[int, tuple[int, float]]:
    """Every process: its parent and its own CPU seconds (user + system)."""
    found: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def _rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0
    )


def _is_coordinator(pid: int, root: int, marker: str) -> bool:
    if not marker:
        return pid == root
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def watch_tree(root: int, sample: TreeSample, stop: threading.Event) -> None:
    """Sample the tree under ``root`` until ``stop`` is set."""
    while not stop.is_set():
        table = _processes()
        tree, frontier = {root}, [root]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, _) in table.items():
                if ppid == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        for pid in tree:
            if pid in table and _is_coordinator(pid, root, sample.coordinator):
                sample.coordinator_cpu_seconds = table[pid][1]
        sample.peak_rss_kib = max(sample.peak_rss_kib, sum(_rss_kib(pid) for pid in tree))
        stop.wait(SAMPLE_SECONDS)


def measured(
    command: list[str], coordinator: str = "", env: dict[str, str] | None = None
) -> tuple[float, TreeSample, str]:
    """Run ``command``, sampling its process tree; its wall seconds, the sample, stdout."""
    sample, stop = TreeSample(coordinator), threading.Event()
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    watcher = threading.Thread(target=watch_tree, args=(process.pid, sample, stop), daemon=True)
    watcher.start()
    out, err = process.communicate()
    elapsed = time.perf_counter() - started
    stop.set()
    watcher.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])}... failed:\n{err[-4000:]}")
    return elapsed, sample, out


BARE_APP = """
import json, sys, time
from flwr.app import Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from oralfed.schemas.model import build_model
from oralfed.schemas.model_record import model_record

clients, rounds, per_round = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
client = ClientApp()

@client.train()
def train(msg, context):
    metrics = MetricRecord({"num-examples": 1})
    return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg)

server = ServerApp()

@server.main()
def main(grid, context):
    share = per_round / clients if per_round else 1.0
    strategy = FedAvg(fraction_train=share, fraction_evaluate=0.0, min_available_nodes=clients)
    strategy.start(grid=grid, initial_arrays=model_record(build_model()), num_rounds=rounds)

started = time.perf_counter()
run_simulation(server_app=server, client_app=client, num_supernodes=clients,
               backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
print(json.dumps({"federation_seconds": time.perf_counter() - started}))
"""


def bare_flower(clients: int, rounds: int, per_round: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
    wall, sample, out = measured(
        [sys.executable, "-c", BARE_APP, str(clients), str(rounds), str(per_round)], env=env
    )
    timing = next(line for line in out.splitlines() if line.startswith('{"federation_seconds"'))
    federation = json.loads(timing)["federation_seconds"]
    asked = per_round or clients
    return _row("bare Flower (trivial client)", clients, rounds, asked, wall, federation, sample)


def oralfed(clients: int, rounds: int, per_round: int, folder: Path) -> dict[str, Any]:
    out = folder / f"oralfed-{clients}-{per_round or clients}"
    command = [sys.executable, "-m", "oralfed.cli", "federate", "--json", "--no-baselines"]
    command += ["--clinics", str(clients), "--rounds", str(rounds), "--out", str(out)]
    command += ["--clinics-per-round", str(per_round)] if per_round else []
    wall, sample, _ = measured(command, coordinator="oralfed.deploy.simulation")
    report = json.loads((out / "report.json").read_text())
    if report["status"] != "completed":
        raise SystemExit(f"oralfed at {clients} clinics: {report['status']}: {report['message']}")
    # The simulation child is launched once the spec is written and writes its outcome last.
    federation = (out / OUTCOME_FILE).stat().st_mtime - (out / SPEC_FILE).stat().st_mtime
    asked = per_round or clients
    row = _row("OralFed (DP-SGD, ledgers)", clients, rounds, asked, wall, federation, sample)
    return {**row, **quality(out, report)}


def quality(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """The federated model against the central pool, on the same synthetic federation.

    The clinics' own DP evaluation covers all of them (its AUC from their noisy, charged
    score histograms). The central pool is trained, non-privately, on the training rows of
    a subsample (every k-th clinic, at most ``QUALITY_CLINICS``: pooling 10,000 clinics'
    rows would train for longer than the federation), and both models are scored exactly
    on that subsample's test splits."""
    from oralfed.client.data import load_clinic_data
    from oralfed.deploy.baselines import central_pool_model, score
    from oralfed.deploy.run_clinics import simulated_clinics
    from oralfed.schemas.model import load_model
    from oralfed.schemas.settings import FederationSettings

    settings = FederationSettings.from_public_dict(report["settings"])
    clinics = simulated_clinics(out)
    subsample = clinics[:: max(1, -(-len(clinics) // QUALITY_CLINICS))]
    data = {
        c.clinic_id: load_clinic_data(c.clinic_id, c.data_path, settings.task) for c in subsample
    }
    central = central_pool_model(data, settings.hidden_sizes, settings.seed)
    federated, _, _ = load_model(Path(report["model_file"]))
    return {
        "dp_evaluation_auc": report["evaluation"]["final"]["auc"],
        "quality_clinics": len(subsample),
        "federated_auc": score(federated, data).pooled.auc,
        "central_auc": score(central, data).pooled.auc,
    }


def _row(
    variant: str,
    clients: int,
    rounds: int,
    asked: int,
    wall: float,
    federation: float,
    sample: TreeSample,
) -> dict[str, Any]:
    client_rounds = asked * rounds
    return {
        "variant": variant,
        "clients": clients,
        "rounds": rounds,
        "asked_per_round": asked,
        "client_rounds": client_rounds,
        "wall_seconds": round(wall, 1),
        "federation_seconds": round(federation, 1),
        "ms_per_client_round": round(1000 * federation / client_rounds, 1),
        "peak_rss_gib": round(sample.peak_rss_kib / 2**20, 2),
        "coordinator_cpu_share": round(
            min(sample.coordinator_cpu_seconds, federation) / federation, 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="100,1000", help="Clinic counts, comma-separated; N/K asks K a round."
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bare-only-up-to", type=int, default=1000)
    parser.add_argument("--oralfed-only-up-to", type=int, default=10_000)
    parser.add_argument("--write-doc", action="store_true")
    arguments = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="oralfed-scale-") as tmp:
        for size, per_round in (_size(entry) for entry in arguments.sizes.split(",")):
            if size <= arguments.bare_only_up_to:
                rows.append(bare_flower(size, arguments.rounds, per_round))
                print(json.dumps(rows[-1]), flush=True)
            if size <= arguments.oralfed_only_up_to:
                rows.append(oralfed(size, arguments.rounds, per_round, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    if arguments.write_doc:
        replace_section(SECTION, _section(rows, arguments))


def _auc_cell(row: dict[str, Any]) -> str:
    if "central_auc" not in row:
        return "-"
    return (
        f"{row['dp_evaluation_auc']:.3f} / {row['federated_auc']:.3f} / "
        f"{row['central_auc']:.3f} ({row['quality_clinics']})"
    )


def _size(entry: str) -> tuple[int, int]:
    """``N`` or ``N/K``: the clinics, and how many a round asks (0: all)."""
    clinics, _, per_round = entry.partition("/")
    return int(clinics), min(int(per_round or 0), int(clinics))


def _baseline(row: dict[str, Any], bare: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Bare Flower's row asking as many per round, at the same size or the largest below."""
    same = [b for b in bare if b["asked_per_round"] == row["asked_per_round"]]
    below = [b for b in same if b["clients"] <= row["clients"]]
    return max(below, key=lambda b: b["clients"]) if below else None


def _section(rows: list[dict[str, Any]], arguments: argparse.Namespace) -> str:
    command = f"python bench/scale.py --sizes {arguments.sizes} --rounds {arguments.rounds}"
    lines = [
        "## Scale: many simulated clinics (bench/scale.py)",
        "",
        f"Machine: {machine_description()}. Command: `{command} --write-doc` (one run).",
        "",
        "| variant | clinics | asked per round | client-rounds | wall (s) | federation (s) | "
        "ms per client-round | ratio to bare Flower | peak RSS of the tree (GiB) | coordinator CPU "
        "share | AUC: DP evaluation / federated / central pool (clinics scored) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bare = [row for row in rows if row["variant"].startswith("bare")]
    for row in rows:
        baseline = _baseline(row, bare)
        ratio = "-"
        if baseline is not None:
            ratio = f"{row['ms_per_client_round'] / baseline['ms_per_client_round']:.1f}"
            ratio += "" if baseline["clients"] == row["clients"] else f" (to {baseline['clients']})"
        lines.append(
            f"| {row['variant']} | {row['clients']} | {row['asked_per_round']} | "
            f"{row['client_rounds']} | {row['wall_seconds']} | {row['federation_seconds']} | "
            f"{row['ms_per_client_round']} | {ratio} | "
            f"{row['peak_rss_gib']} | {row['coordinator_cpu_share']} | {_auc_cell(row)} |"
        )
    ours = [row for row in rows if not row["variant"].startswith("bare")]
    if ours:
        # Rounds from the largest run asking every clinic (a sampled one meets fresh clinics
        # more often); set-up per clinic from the largest run.
        asked_all = [row for row in ours if row["asked_per_round"] == row["clients"]] or ours
        full = max(asked_all, key=lambda row: row["clients"])
        biggest = max(ours, key=lambda row: row["clients"])
        setup = (biggest["wall_seconds"] - biggest["federation_seconds"]) / biggest["clients"]
        rounds_minutes = full["ms_per_client_round"] * 30_000 / 60_000
        if full["clients"] >= 10_000:
            whole = (
                f"Measured: {full['clients']:,} clinics by {full['rounds']} rounds with every "
                f"clinic asked took {full['wall_seconds'] / 60:.0f} min in all "
                f"({full['federation_seconds'] / 60:.0f} min of rounds, "
                f"{(full['wall_seconds'] - full['federation_seconds']) / 60:.0f} min of set-up: "
                "writing and validating the synthetic files), against the target of 20 min."
            )
        else:
            whole = (
                f"Projected from the {full['clients']}-clinic row (asked "
                f"{full['asked_per_round']} a round) and the {biggest['clients']}-clinic row's "
                f"set-up, 10,000 clinics by 3 rounds with every clinic asked would take about "
                f"{rounds_minutes:.0f} min of rounds and {setup * 10_000 / 60:.0f} min of setup "
                "(writing and validating the synthetic files), against the target of 20 min."
            )
        lines += [
            "",
            whole + " What bounds a client-round is in docs/scale.md. The central pool is "
            f"trained on at most {QUALITY_CLINICS} clinics' rows (every k-th clinic), and the "
            "federated and central models are scored on those clinics' test splits; the DP "
            "evaluation is the clinics' own, over all of them.",
            "",
            "Reading the rows: a clinic's first request in a worker pays for its file's import "
            "and, for a plan the worker has not met, its σ calibration; later rounds find "
            "both done. A federation sampling from many more clinics than it asks meets mostly "
            "new clinics, and at a hundred clinics most plans are new. The coordinator CPU "
            "share is the simulation process's (the ServerApp, Flower's in-memory SuperLink "
            "and Ray driver). Bare Flower runs Flower's engine as it is; OralFed's "
            "simulation hands out messages in one pass (docs/scale.md).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
