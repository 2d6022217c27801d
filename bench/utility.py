"""Utility of the federated DP model against the central pool and local-only models.

Runs ``oralfed federate`` (real Flower simulation, real ledgers) on a synthetic federation
and reads its report: all three models are trained on the same data in the same run and
scored on the same per-clinic test splits. Targets (issue 2): federated DP AUC within 0.02
of the central non-private pool, and above the mean local-only AUC, at ε ≤ 3 per clinic.

    python bench/utility.py [--clinics 10] [--rounds 5] [--target-epsilon 3] [--seed 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchmarks_doc import machine_description, replace_section  # noqa: E402

AUC_GAP_TARGET = 0.02


def run_federation(arguments: list[str]) -> tuple[dict[str, Any], float]:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "oralfed.cli", "federate", "--json"]
        command += ["--out", f"{folder}/run"]
        started = time.perf_counter()
        completed = subprocess.run(command + arguments, capture_output=True, text=True, cwd=ROOT)
        elapsed = time.perf_counter() - started
        if completed.returncode != 0:
            raise SystemExit(f"federate failed:\n{completed.stderr[-4000:]}")
        return json.loads((Path(folder) / "run" / "report.json").read_text()), elapsed


def summarise(report: dict[str, Any], arguments: list[str], seconds: float) -> dict[str, Any]:
    overall = report["overall"]
    federated, central = overall["federated_dp"]["auc"], overall["central_pooled"]["auc"]
    local_mean = overall["local_only_mean_auc"]
    max_epsilon = max(c["epsilon_spent"] for c in report["clinics"])
    return {
        "command": "python bench/utility.py " + " ".join(arguments),
        "machine": machine_description(),
        "wall_seconds": round(seconds, 1),
        "auc_federated_dp": federated,
        "auc_central_pooled": central,
        "auc_local_only_mean": local_mean,
        "auc_gap_to_central": central - federated,
        "ratio_federated_to_central": federated / central,
        "max_epsilon_spent": max_epsilon,
        "delta": report["clinics"][0]["delta"],
        "accountant": report["clinics"][0]["accountant"],
        "target_gap_met": central - federated <= AUC_GAP_TARGET,
        "target_local_met": federated > local_mean,
        "clinics": [
            {
                "clinic": c["clinic"],
                "auc_federated_dp": c["federated_dp"]["auc"],
                "auc_local_only": c["local_only"]["auc"],
                "auc_central": c["central_pooled"]["auc"],
                "epsilon_spent": c["epsilon_spent"],
            }
            for c in report["clinics"]
        ],
        "settings": report["settings"],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "## Utility: federated DP vs central pool vs local-only (bench/utility.py)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; wall time {result['wall_seconds']} s for the whole run "
        f"(federation + baselines); DP engine at the clinics: {result['settings']['dp_engine']}.",
        "",
        "| model (pooled test splits) | AUC | ratio to central |",
        "|---|---|---|",
        f"| federated, DP (ε ≤ {result['max_epsilon_spent']:.2f} per clinic, δ = "
        f"{result['delta']:.0e}, {result['accountant']}) | {result['auc_federated_dp']:.4f} | "
        f"{result['ratio_federated_to_central']:.4f} |",
        f"| central pool, non-private | {result['auc_central_pooled']:.4f} | 1 |",
        f"| local-only, mean over clinics | {result['auc_local_only_mean']:.4f} | "
        f"{result['auc_local_only_mean'] / result['auc_central_pooled']:.4f} |",
        "",
        f"Gap to central: {result['auc_gap_to_central']:+.4f} AUC (target ≤ {AUC_GAP_TARGET}: "
        f"{'met' if result['target_gap_met'] else 'MISSED'}); above local-only mean: "
        f"{'met' if result['target_local_met'] else 'MISSED'}.",
        "",
        "| clinic | federated DP | local-only | central | ε spent |",
        "|---|---|---|---|---|",
    ]
    for clinic in result["clinics"]:
        lines.append(
            f"| {clinic['clinic']} | {_f(clinic['auc_federated_dp'])} | "
            f"{_f(clinic['auc_local_only'])} | {_f(clinic['auc_central'])} | "
            f"{clinic['epsilon_spent']:.3f} |"
        )
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinics", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target-epsilon", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    options = parser.parse_args()
    arguments = [
        "--clinics",
        str(options.clinics),
        "--rounds",
        str(options.rounds),
        "--target-epsilon",
        str(options.target_epsilon),
        "--seed",
        str(options.seed),
    ]
    report, seconds = run_federation(arguments)
    result = summarise(report, arguments, seconds)
    if not options.no_doc:
        replace_section("utility", markdown(result))
    print(json.dumps(result, indent=2) if options.json else markdown(result))


if __name__ == "__main__":
    main()
