"""Accuracy of DP prevalence by group across synthetic clinics, and the time of one query.

Accuracy: untreated-caries prevalence by smoking status and by age band over 10 synthetic
clinics, answered with the clinics' real query code (consent filter, noise calibrated with
the ledger's accountant, small-cell rule) and the coordinator's combination, in-process and
repeated to average over the noise. It is compared with the exact pooled answer over the
same consenting records, computed in the same run. Relative error = |DP - exact| / exact,
averaged over repetitions; a suppressed cell counts as a miss (reported separately).

Time: one query of 3 clinics through Flower's Simulation Engine, as ``oralfed insights
query`` runs it (process start, Ray start, clinics' work, combination, record).

    python bench/insights_accuracy.py [--clinics 10] [--repeats 100] [--seed 7] [--json]
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchmarks_doc import machine_description, replace_section  # noqa: E402
from oralfed.client.query import local_release, statistics_records  # noqa: E402
from oralfed.privacy.mechanisms import calibrate, releases_for  # noqa: E402
from oralfed.schemas.importer import import_file  # noqa: E402
from oralfed.schemas.query import parse_query  # noqa: E402
from oralfed.schemas.query_messages import ClinicAnswer  # noqa: E402
from oralfed.schemas.synthetic import write_federation  # noqa: E402
from oralfed.server.insights import SuppressionPolicy, combine  # noqa: E402

EPSILONS = (0.1, 0.5, 1.0)
GROUPINGS = ("smoking_status", "age_band")
SIMULATED_CLINICS = 3


def accuracy(clinics: int, repeats: int, seed: int) -> list[dict[str, Any]]:
    """Per group and ε: exact prevalence, mean relative error, stated 95 % half-width."""
    with tempfile.TemporaryDirectory() as folder:
        files = write_federation(Path(folder), clinics, seed)
        records = [statistics_records(import_file(path)) for path in files]
    pooled = [r for clinic in records for r in clinic]
    rng = np.random.default_rng(seed)
    rows = []
    for grouping in GROUPINGS:
        for epsilon in EPSILONS:
            spec = parse_query(
                {
                    "measure": "proportion",
                    "column": "untreated_caries",
                    "group_by": [grouping],
                    "epsilon": epsilon,
                }
            )
            cells, flags = spec.cell_indices(pooled), spec.values(pooled)
            assert flags is not None
            calibration = calibrate("gaussian", epsilon, 1e-6, releases_for(spec.statistic))
            errors = np.zeros((repeats, spec.n_cells))
            half_widths = np.zeros((repeats, spec.n_cells))
            for repeat in range(repeats):
                answers = [_answer(i, c, spec, calibration) for i, c in enumerate(records)]
                for index, cell in enumerate(combine(spec, answers, SuppressionPolicy(), rng)):
                    exact = flags[cells == index].mean()
                    if cell.value is None:
                        errors[repeat, index] = np.nan
                        continue
                    errors[repeat, index] = abs(cell.value.value - exact) / exact
                    half_widths[repeat, index] = (cell.value.high - cell.value.low) / 2 / exact
            for index, group in enumerate(spec.cells()):
                suppressed = np.isnan(errors[:, index])
                shown = ~suppressed
                rows.append(
                    {
                        "grouping": grouping,
                        "group": group[grouping],
                        "epsilon": epsilon,
                        "records": int((cells == index).sum()),
                        "exact": float(flags[cells == index].mean()),
                        "mean_relative_error": float(errors[shown, index].mean())
                        if shown.any()
                        else None,
                        "stated_relative_half_width": float(half_widths[shown, index].mean())
                        if shown.any()
                        else None,
                        "suppressed_share": float(suppressed.mean()),
                    }
                )
    return rows


def _answer(index: int, records: list, spec: Any, calibration: Any) -> ClinicAnswer:
    release = local_release(records, spec, calibration)
    return ClinicAnswer(
        f"clinic-{index}",
        release.parts["count"].values.tolist(),
        release.parts["count"].noise_sd,
        release.parts["positives"].values.tolist(),
        release.parts["positives"].noise_sd,
        calibration.noise_multiplier,
        0.0,
        0.0,
        0.0,
        "pld",
    )


def simulated_query_seconds(seed: int) -> dict[str, float]:
    """Wall time of ``oralfed insights query`` over a simulated federation of 3 clinics."""
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable,
            "-m",
            "oralfed.cli",
            "insights",
            "query",
            "--measure",
            "proportion",
            "--column",
            "untreated_caries",
            "--group-by",
            "smoking_status",
            "--epsilon",
            "1",
            "--clinics",
            str(SIMULATED_CLINICS),
            "--seed",
            str(seed),
            "--out",
            str(Path(folder) / "query"),
            "--json",
        ]
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
        wall = time.perf_counter() - started
    answer = json.loads(completed.stdout[completed.stdout.index("{") :])
    return {"command_seconds": wall, "server_app_seconds": answer["seconds"]}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "## Insights: accuracy of DP prevalence by group, and query time",
        "",
        f"`python bench/insights_accuracy.py` — {result['clinics']} synthetic clinics "
        f"(seed {result['seed']}), untreated-caries prevalence, Gaussian noise, δ = 1e-6 per "
        f"query, {result['repeats']} repetitions per ε; exact = pooled answer over the same "
        "consenting records in the same run. Cells: mean relative error |DP - exact| / exact "
        "(and, in brackets, the stated 95 % interval's relative half-width).",
        "",
        "| group | records | exact | " + " | ".join(f"ε = {e:g}" for e in EPSILONS) + " |",
        "|---|---:|---:|" + "---:|" * len(EPSILONS),
    ]
    rows = result["accuracy"]
    for grouping in GROUPINGS:
        groups = dict.fromkeys(r["group"] for r in rows if r["grouping"] == grouping)
        for group in groups:
            cells = [r for r in rows if r["grouping"] == grouping and r["group"] == group]
            first = cells[0]
            figures = []
            for row in sorted(cells, key=lambda r: r["epsilon"]):
                if row["mean_relative_error"] is None:
                    figures.append("suppressed")
                    continue
                text = (
                    f"{100 * row['mean_relative_error']:.2f} % "
                    f"({100 * row['stated_relative_half_width']:.2f} %)"
                )
                if row["suppressed_share"] > 0:
                    text += f", suppressed {100 * row['suppressed_share']:.0f} %"
                figures.append(text)
            lines.append(
                f"| {grouping} = {group} | {first['records']} | {first['exact']:.3f} | "
                + " | ".join(figures)
                + " |"
            )
    timing = result["simulated_query"]
    lines += [
        "",
        f"One query on the simulated federation ({SIMULATED_CLINICS} clinics, Flower "
        f"Simulation Engine): `oralfed insights query` took {timing['command_seconds']:.1f} s "
        f"end to end, of which {timing['server_app_seconds']:.1f} s inside the ServerApp "
        "(sending the query, the clinics' import, calibration, ledger charge and noise, "
        "combination); the rest is process and Ray start-up.",
        "",
        f"Machine: {result['machine']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinics", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    options = parser.parse_args()
    result = {
        "clinics": options.clinics,
        "repeats": options.repeats,
        "seed": options.seed,
        "accuracy": accuracy(options.clinics, options.repeats, options.seed),
        "simulated_query": simulated_query_seconds(options.seed),
        "machine": machine_description(),
    }
    if not options.no_doc:
        replace_section("insights", markdown(result))
    print(json.dumps(result, indent=2) if options.json else markdown(result))


if __name__ == "__main__":
    main()
