"""The global model's AUC when one clinic is hostile, under each aggregation (issue 11).

One clinic of the standard synthetic federation (10 clinics; the largest, which weighs
most) runs a hostile ClientApp: it trains and pays like an honest clinic, then corrupts its
update before replying: times 100 (``x100``), sign-flipped (``sign-flip``: the sent model minus
its honest update) or all NaN (``nan``). Each scenario is a real federation: Flower's
Simulation Engine in a process group of its own, the project's ServerApp
(``oralfed.server.app.make_server_app``, with its update checks and norm bound) and the
project's ClientApp for every clinic, the hostile one wrapped. The global model is scored
as bench/utility.py scores it: ``oralfed.deploy.baselines.score`` on the clinics' pooled
test splits.

    python bench/robustness.py [--attacks none,x100,sign-flip,nan]
        [--aggregations mean,median,trimmed-mean,krum,multikrum,bulyan] [--rounds 2]
    python bench/robustness.py --norms RUN_DIR   # honest update norms of a finished run

``--norms`` prints the update norms a run recorded (history.json): how the default
``update-norm-bound`` was chosen (docs/robustness.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchmarks_doc import machine_description, replace_section  # noqa: E402
from bench.utility import _f  # noqa: E402
from oralfed.deploy.clinic_sources import ClinicSource, clinic_nodes  # noqa: E402
from oralfed.deploy.processes import stop_process_group  # noqa: E402
from oralfed.schemas.node_config import ClinicNode  # noqa: E402
from oralfed.schemas.settings import (  # noqa: E402
    AggregationName,
    FederationSettings,
    clinics_needed,
)

CLINICS = 10
# The clinics keep one ledger across all scenarios, as a clinic does across runs (so each
# calibrates its noise and pays for its size estimate once); 19 runs of ε 3 need more than
# the default lifetime cap of 10.
LIFETIME_CAP = 1_000.0
SPEC_FILE = "robustness-spec.json"
HISTORY_FILE = "history.json"
MODEL_FILE = "global_model.pt"
Corruption = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (sent, trained) -> sent back
ATTACKS: dict[str, Corruption | None] = {
    "none": None,
    "x100": lambda sent, trained: sent + (trained - sent) * 100,
    "sign-flip": lambda sent, trained: sent - (trained - sent),
    "nan": lambda sent, trained: np.full_like(trained, np.nan),
}


def hostile_client_app(clinics: list[ClinicNode], attacker: str, attack: str) -> Any:
    """The project's ClientApp for every clinic; ``attacker``'s train replies corrupted.

    The hostile clinic runs the honest handler (it trains and is charged like any clinic)
    and then replaces its update by ``ATTACKS[attack]`` of it; evaluation stays honest.
    """
    from flwr.app import Array, ArrayRecord, Context, Message
    from flwr.clientapp import ClientApp

    from oralfed.client.app import make_client_app
    from oralfed.client.node import resolve_clinic_node
    from oralfed.schemas import protocol

    honest = make_client_app(clinics)
    corrupt = ATTACKS[attack]
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = honest(msg, context)
        node = resolve_clinic_node(context, clinics)
        if corrupt is None or node.clinic_id != attacker or reply.has_error():
            return reply
        sent = msg.content.array_records["arrays"]
        trained = reply.content.array_records[protocol.REPLY_ARRAYS]
        reply.content[protocol.REPLY_ARRAYS] = ArrayRecord(
            {
                name: Array(corrupt(sent[name].numpy(), value.numpy()).astype(np.float32))
                for name, value in trained.items()
            }
        )
        return reply

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return honest(msg, context)

    return app


def run_child(folder: Path) -> int:
    """Child side: one federation on Flower's Simulation Engine, in this process."""
    import torch
    from flwr.simulation import run_simulation

    from oralfed.server.app import make_server_app

    torch.set_num_threads(1)
    spec = json.loads((folder / SPEC_FILE).read_text())
    clinics = [ClinicNode.from_config(entry) for entry in spec["clinics"]]
    outcomes: list[Any] = []
    run_simulation(
        server_app=make_server_app(
            FederationSettings.from_public_dict(spec["settings"]),
            outcomes,
            simulated_clinics=len(clinics),
        ),
        client_app=hostile_client_app(clinics, spec["attacker"], spec["attack"]),
        num_supernodes=len(clinics),
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2},
        },
    )
    (folder / "status.json").write_text(
        json.dumps({"status": outcomes[0].status if outcomes else "failed"})
    )
    return 0


def run_scenario(
    settings: FederationSettings, clinics: list[ClinicNode], attacker: str, attack: str
) -> dict[str, Any]:
    """One federation in a child process group (Ray included), stopped as a whole."""
    from oralfed.client.data import load_clinic_data
    from oralfed.deploy.baselines import score
    from oralfed.schemas.model import load_model

    assert settings.out_dir is not None
    folder = settings.out_dir
    folder.mkdir(parents=True)
    spec = {
        "settings": settings.public_dict(),
        "clinics": [c.to_config() for c in clinics],
        "attacker": attacker,
        "attack": attack,
    }
    (folder / SPEC_FILE).write_text(json.dumps(spec))
    started = time.perf_counter()
    with (folder / "federation.log").open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        try:
            child.wait()
        finally:
            stop_process_group(child)
    seconds = time.perf_counter() - started
    history = json.loads((folder / HISTORY_FILE).read_text())
    row: dict[str, Any] = {
        "attack": attack,
        "aggregation": settings.aggregation.value,
        "rounds_completed": len(history),
        "wall_seconds": round(seconds, 1),
        "rejected": sum(len(r["rejected"]) for r in history),
        "clipped": sum(len(r["clipped"]) for r in history),
        "auc": None,
    }
    if (folder / MODEL_FILE).is_file() and len(history) == settings.rounds:
        model, _, _ = load_model(folder / MODEL_FILE)
        data = {
            c.clinic_id: load_clinic_data(c.clinic_id, c.data_path, settings.task) for c in clinics
        }
        row["auc"] = score(model, data).pooled.auc
    return row


def scenario_settings(
    aggregation: AggregationName, rounds: int, seed: int, out: Path
) -> FederationSettings:
    """The standard federation's settings with ``aggregation`` tolerating one hostile clinic
    (min-clinics raised to what it needs)."""
    hostile, trim = FederationSettings.hostile_clinics, FederationSettings.trim_fraction
    needed = clinics_needed(aggregation, hostile, trim) or CLINICS
    return FederationSettings(
        rounds=rounds,
        seed=seed,
        aggregation=aggregation,
        min_clinics=max(FederationSettings.min_clinics, needed),
        out_dir=out,
    )


def honest_norms(run_dir: Path) -> list[str]:
    """Per round: each accepted update's L2 norm (history.json), largest first."""
    lines = []
    for summary in json.loads((run_dir / HISTORY_FILE).read_text()):
        norms = sorted(
            (c["update_norm"] for c in summary["clinics"] if c.get("update_norm") is not None),
            reverse=True,
        )
        lines.append(f"round {summary['round']}: " + ", ".join(f"{n:.2f}" for n in norms))
    return lines


def markdown(rows: list[dict[str, Any]], command: str, attacker: str, bound: float) -> str:
    lines = [
        "## Robustness: one hostile clinic under each aggregation (bench/robustness.py)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_description()}. Standard synthetic federation ({CLINICS} clinics, "
        f"full privacy protocol); the hostile clinic is {attacker} (the largest). AUC: the "
        "benchmark harness's exact score of the final global model on the clinics' pooled "
        f"test splits, as in the utility section. Norm bound {bound:g} (the default); robust "
        "aggregations tolerate 1 hostile clinic (min-clinics raised to what each needs). "
        "Single runs: the DP noise is secret, so a rerun moves each AUC by about ±0.005.",
        "",
        "| attack | aggregation | AUC | rounds | rejected replies | clipped updates | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['aggregation']} | {_f(r['auc'])} | {r['rounds_completed']} "
            f"| {r['rejected']} | {r['clipped']} | {r['wall_seconds']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--aggregations", default=",".join(a.value for a in AggregationName))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--norms", type=Path, help="print a finished run's update norms")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child is not None:
        sys.exit(run_child(options.child))
    if options.norms is not None:
        print("\n".join(honest_norms(options.norms)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = ClinicSource(clinics=CLINICS, seed=options.seed, epsilon_cap=LIFETIME_CAP)
        clinics = clinic_nodes(source, Path(tmp))
        attacker = _largest(clinics)
        for attack in options.attacks.split(","):
            for aggregation in options.aggregations.split(","):
                if attack == "none" and aggregation != AggregationName.MEAN.value:
                    continue  # the honest reference: the default aggregation only
                out = Path(tmp) / f"{attack}-{aggregation}"
                settings = scenario_settings(
                    AggregationName(aggregation), options.rounds, options.seed, out
                )
                rows.append(run_scenario(settings, clinics, attacker, attack))
                print(f"{attack}/{aggregation}: AUC {_f(rows[-1]['auc'])}", flush=True)
    command = " ".join(["python bench/robustness.py", *sys.argv[1:]])
    text = markdown(rows, command, attacker, FederationSettings().update_norm_bound)
    if not options.no_doc:
        replace_section("robustness", text)
    print(text)


def _largest(clinics: list[ClinicNode]) -> str:
    from oralfed.client.data import load_clinic_data

    task = FederationSettings().task
    sizes = {c.clinic_id: load_clinic_data(c.clinic_id, c.data_path, task).n_train for c in clinics}
    return max(sizes, key=lambda clinic: sizes[clinic])


if __name__ == "__main__":
    main()
