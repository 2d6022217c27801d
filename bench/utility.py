"""Utility of the federated DP model against the central pool and local-only models.

Runs ``oralfed federate`` (real Flower simulation, real ledgers, the full privacy protocol:
DP evaluation at the clinics, public sizes, policy) on synthetic federations and reads its
report: all three models are trained on the same data in the same run and scored on the
same per-clinic test splits by the benchmark harness (which holds every file). Targets
(issue 10): federated DP AUC within 0.02 of the central non-private pool, and above the
mean local-only AUC, at ε ≤ 3 per clinic over the whole run including evaluation, on

* ``standard``: 10 synthetic clinics (the quick start's federation);
* ``uneven``: 6 small, uneven clinics of about 300 to 4,000 records each.

Protocol variants, run on the same data, say what each privacy measure costs in AUC:
``protocol`` (the default: the clinics' sizes are DP estimates, one DP evaluation at
ε = 0.3 after the last round), ``declared-sizes`` (the clinics declare their sizes public:
no estimate is spent) and ``no-evaluation-budget`` (evaluation ε 0.01: almost all of the
target goes to training, the evaluation becomes pure noise).

    python bench/utility.py [--federations standard,uneven] [--variants protocol,...]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchmarks_doc import machine_description, replace_section  # noqa: E402
from oralfed.deploy.simulated_run import NON_PRIVATE_BASELINES_FILE  # noqa: E402
from oralfed.schemas.contract import CONTRACT_COLUMNS  # noqa: E402
from oralfed.schemas.synthetic import clinic_profiles, synthesize_clinic  # noqa: E402

AUC_GAP_TARGET = 0.02
UNEVEN_SIZES = (300, 650, 1_100, 1_800, 2_800, 4_000)
VARIANTS: dict[str, list[str]] = {
    "protocol": [],
    "declared-sizes": ["--declare-sizes"],
    "no-evaluation-budget": ["--eval-epsilon", "0.01"],
}


def write_uneven_federation(folder: Path, seed: int) -> Path:
    """Six synthetic clinics of :data:`UNEVEN_SIZES` records (each a different archetype)."""
    folder.mkdir(parents=True, exist_ok=True)
    for profile, size in zip(clinic_profiles(len(UNEVEN_SIZES), seed), UNEVEN_SIZES, strict=True):
        rows = synthesize_clinic(replace(profile, n_patients=size), seed)
        with (folder / f"{profile.clinic_id}.csv").open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=list(CONTRACT_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
    return folder


def run_federation(arguments: list[str], folder: Path) -> tuple[dict[str, Any], float]:
    command = [sys.executable, "-m", "oralfed.cli", "federate", "--json"]
    command += ["--out", str(folder / "run"), *arguments]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"federate failed:\n{completed.stderr[-4000:]}")
    report = json.loads((folder / "run" / "report.json").read_text())
    apart = folder / "run" / NON_PRIVATE_BASELINES_FILE
    if apart.is_file():  # real-file runs keep the baselines out of the report
        baselines = json.loads(apart.read_text())
        report["overall"] = baselines["overall"]
        by_clinic = {row["clinic"]: row for row in baselines["clinics"]}
        for row in report["clinics"]:
            row.update(by_clinic.get(row["clinic"], {}))
    return report, elapsed


def summarise(
    report: dict[str, Any], federation: str, variant: str, seconds: float
) -> dict[str, Any]:
    overall = report["overall"]
    federated, central = overall["federated_dp"]["auc"], overall["central_pooled"]["auc"]
    local_mean = overall["local_only_mean_auc"]
    evaluation = report["evaluation"]["final"] or {}
    return {
        "federation": federation,
        "variant": variant,
        "wall_seconds": round(seconds, 1),
        "auc_federated_dp": federated,
        "auc_central_pooled": central,
        "auc_local_only_mean": local_mean,
        "auc_gap_to_central": central - federated,
        "dp_evaluation_auc": evaluation.get("auc"),
        "dp_evaluation_auc_95": evaluation.get("auc_95"),
        "max_epsilon_spent": max(c["epsilon_spent"] for c in report["clinics"]),
        "delta": report["clinics"][0]["delta"],
        "accountant": report["clinics"][0]["accountant"],
        "target_gap_met": central - federated <= AUC_GAP_TARGET,
        "target_local_met": federated > local_mean,
        "target_epsilon_met": max(c["epsilon_spent"] for c in report["clinics"]) <= 3.0 + 1e-9,
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
    }


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        "## Utility: federated DP vs central pool vs local-only (bench/utility.py)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_description()}. Full privacy protocol (issue 10): DP-SGD from "
        "public sizes, one DP evaluation at the clinics, 128-bit secret noise; ε is each "
        "clinic's over the whole run, evaluation and size estimate included; the AUCs in the "
        "first columns are the benchmark harness's exact scores of each model on the "
        "clinics' pooled test splits.",
        "",
        "| federation | variant | federated DP | central (non-private) | gap | local-only mean "
        "| DP-evaluated AUC (95 %) | max ε spent | targets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        interval = r["dp_evaluation_auc_95"]
        targets = "met" if r["target_gap_met"] and r["target_local_met"] else "MISSED"
        lines.append(
            f"| {r['federation']} | {r['variant']} | {r['auc_federated_dp']:.4f} | "
            f"{r['auc_central_pooled']:.4f} | {r['auc_gap_to_central']:+.4f} | "
            f"{r['auc_local_only_mean']:.4f} | {_f(r['dp_evaluation_auc'])}"
            + (f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else "")
            + f" | {r['max_epsilon_spent']:.3f} (δ {r['delta']:.0e}, {r['accountant']}) "
            f"| {targets} |"
        )
    lines += ["", *cost_lines(results), "", "Per clinic (variant `protocol`):", ""]
    for r in results:
        if r["variant"] != "protocol":
            continue
        lines += [
            f"*{r['federation']}*: "
            + ", ".join(
                f"{c['clinic']} {_f(c['auc_federated_dp'])} (local {_f(c['auc_local_only'])})"
                for c in r["clinics"]
            ),
            "",
        ]
    return "\n".join(lines)


def cost_lines(results: list[dict[str, Any]]) -> list[str]:
    """What each privacy measure cost in AUC: the variant without it minus the protocol.

    Single runs: the DP noise is secret, so a rerun moves each AUC by about ±0.005; a cost
    smaller than that is not distinguishable from zero in one run.
    """
    lines = ["What each measure cost (AUC of the variant without it, minus the protocol's):", ""]
    by_key = {(r["federation"], r["variant"]): r["auc_federated_dp"] for r in results}
    for federation in dict.fromkeys(r["federation"] for r in results):
        protocol = by_key.get((federation, "protocol"))
        if protocol is None:
            continue
        parts = [
            f"{label} {by_key[(federation, variant)] - protocol:+.4f}"
            for variant, label in (
                ("declared-sizes", "the DP size estimate"),
                ("no-evaluation-budget", "the DP evaluation's ε"),
            )
            if (federation, variant) in by_key
        ]
        lines.append(f"- {federation}: " + "; ".join(parts) + " (single runs: noise ±0.005)")
    return lines


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--federations", default="standard,uneven")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    options = parser.parse_args()
    results = []
    for federation in options.federations.split(","):
        for variant in options.variants.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                common = ["--rounds", str(options.rounds), "--seed", str(options.seed)]
                if federation == "uneven":
                    data = write_uneven_federation(folder / "data", options.seed)
                    common += ["--data", str(data), "--baselines", "--state-dir", tmp + "/s"]
                else:
                    common += ["--clinics", "10"]
                report, seconds = run_federation(common + VARIANTS[variant], folder)
            results.append(summarise(report, federation, variant, seconds))
            print(f"{federation}/{variant}: {results[-1]['auc_federated_dp']:.4f}", flush=True)
    command = "python bench/utility.py " + " ".join(sys.argv[1:])
    if not options.no_doc:
        replace_section("utility", markdown(results, command))
    print(json.dumps(results, indent=2) if options.json else markdown(results, command))


if __name__ == "__main__":
    main()
