"""The ``oralfed`` command's user-facing behaviour: reports, JSON, and clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from oralfed.schemas.errors import ExitCode
from oralfed.schemas.features import Task
from oralfed.schemas.model import build_model, save_model
from tests.conftest import WriteCsv, good_rows, run_cli


def test_validate_prints_report_and_writes_quarantine(
    capsys: pytest.CaptureFixture[str], write_csv: WriteCsv
) -> None:
    rows = good_rows(4)
    rows[2]["age_years"] = "300"
    path = write_csv(rows)
    code, out, _ = run_cli(capsys, "data", "validate", path, "--json")
    report = json.loads(out)
    assert code == 0
    assert (report["rows_read"], report["rows_accepted"], report["rows_rejected"]) == (4, 3, 1)
    quarantine = Path(report["quarantine_file"])
    assert quarantine == path.with_name("clinic.quarantine.csv") and quarantine.is_file()
    code, out, _ = run_cli(capsys, "data", "validate", path)
    assert code == 0 and "rows rejected" in out and "age_years" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"a,b\n1,2\n", "not an OralFed contract file"),
        (b"patient_ref,age_years\np1,40\n", "missing required column"),
        ("patient_r\u00e9f,age_years\np1,40\n".encode("latin-1"), "not UTF-8"),
    ],
)
def test_bad_files_give_one_clear_error_without_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(content)
    code, _, err = run_cli(capsys, "data", "validate", path)
    assert code == ExitCode.INVALID_DATA
    assert message in err and str(path) in err.replace("\n", "")
    assert "Traceback" not in err


def test_synth_writes_valid_clinics(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, _ = run_cli(
        capsys, "data", "synth", "--out", tmp_path, "--clinics", "2", "--seed", "4"
    )
    assert code == 0
    files = sorted(tmp_path.glob("clinic-*.csv"))
    assert [f.name for f in files] == ["clinic-01.csv", "clinic-02.csv"]
    code, out, _ = run_cli(capsys, "data", "validate", files[0], "--json")
    assert code == 0 and json.loads(out)["rows_rejected"] == 0


def test_schema_export(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, _ = run_cli(capsys, "schema", "export", "--out", tmp_path / "s.json")
    schema = json.loads((tmp_path / "s.json").read_text())
    assert code == 0 and "consent_tier" in schema["required"]


def test_privacy_calculator_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    base = ("privacy", "epsilon", "--sample-rate", "0.02", "--steps", "500", "--delta", "1e-5")
    code, out, _ = run_cli(capsys, *base, "--target-epsilon", "2", "--json")
    planned = json.loads(out)
    assert code == 0 and planned["epsilon"] <= 2.0 and planned["accountant"] == "pld"
    sigma = str(planned["noise_multiplier"])
    code, out, _ = run_cli(capsys, *base, "--noise-multiplier", sigma, "--json")
    assert json.loads(out)["epsilon"] == pytest.approx(planned["epsilon"])


@pytest.mark.parametrize(
    "extra",
    [(), ("--noise-multiplier", "1", "--target-epsilon", "1"), ("--noise-multiplier", "-1")],
)
def test_privacy_calculator_rejects_bad_options(
    capsys: pytest.CaptureFixture[str], extra: tuple[str, ...]
) -> None:
    code, _, err = run_cli(
        capsys,
        "privacy",
        "epsilon",
        "--sample-rate",
        "0.02",
        "--steps",
        "5",
        "--delta",
        "1e-5",
        *extra,
    )
    assert code == 2 and "error" in err and "Traceback" not in err


def test_model_score_writes_one_risk_per_accepted_row(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, write_csv: WriteCsv
) -> None:
    model_path = tmp_path / "model.pt"
    save_model(build_model(seed=1), model_path, Task.UNTREATED_CARIES, {})
    rows = good_rows(3)
    rows[1]["sex"] = "?"
    code, _, _ = run_cli(
        capsys, "model", "score", model_path, write_csv(rows), "--out", tmp_path / "r.csv"
    )
    with (tmp_path / "r.csv").open() as stream:
        scored = list(csv.DictReader(stream))
    assert code == 0
    assert [r["patient_ref"] for r in scored] == ["p-0000", "p-0002"]
    assert all(0 < float(r["untreated_caries_risk"]) < 1 for r in scored)
    assert (tmp_path / "r.quarantine.csv").is_file()


def test_model_score_refuses_a_non_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "m.pt").write_bytes(b"not a model")
    code, _, err = run_cli(
        capsys, "model", "score", tmp_path / "m.pt", tmp_path / "x.csv", "--out", tmp_path / "o"
    )
    assert code == ExitCode.MODEL_FORMAT and "not an OralFed model file" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--rounds", "2", "--noise-multiplier", "1", "--target-epsilon", "2"), "at most one"),
        (("--epsilon-cap", "0"), "epsilon cap must be positive"),
        (("--strategy", "fedsgd"), "'fedsgd' is not one of"),
        (("--rounds", "0"), "--rounds must be at least 1"),
        (("--hidden-sizes", "8,x"), "--hidden-sizes must be comma-separated whole numbers"),
        (("--clinics", "10001"), "10001 is not in the range 1<=x<=10000"),
        (("--clinics-per-round", "1"), "--clinics-per-round=1 samples fewer clinics than the"),
        (("--clinics-per-round", "2.5"), "--clinics-per-round must be a whole number of clinics"),
    ],
)
def test_federate_rejects_bad_options_before_doing_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    code, _, err = run_cli(capsys, "federate", "--out", tmp_path / "run", *extra)
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()


def test_federate_refuses_a_folder_with_a_bad_file_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, write_csv: WriteCsv
) -> None:
    write_csv(good_rows(30), name="clinic-a.csv")
    care_only = [{**row, "consent_tier": "care_only"} for row in good_rows(30)]
    bad = write_csv(care_only, name="clinic-b.csv")
    code, _, err = run_cli(capsys, "federate", "--data", tmp_path, "--out", tmp_path / "run")
    assert code == ExitCode.INVALID_DATA and str(bad) in err.replace("\n", "")
    assert "research-tier" in err
    assert not (tmp_path / "run").exists()


def _clinic_row(k: int) -> dict[str, object]:
    refusals = [{"round": 2, "status": "refused", "reason": "budget"}] if k % 10 == 0 else []
    return {
        "clinic": f"clinic-{k:05d}",
        "rounds_trained": 1 + k % 2,
        "refusals": refusals,
        "clipped": [],
        "epsilon_spent": 0.01 * k,
        "epsilon_cap": 10.0,
        "epsilon_left": 10.0 - 0.01 * k,
        "delta": 1e-5,
        "accountant": "pld",
        "federated_dp": {"auc": 0.5 + k / 1000},
    }


def test_a_large_federation_is_summarised_and_a_small_one_listed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from oralfed.cli.federate import LISTED_CLINICS, render_report

    for count in (LISTED_CLINICS, 401):
        rows = [_clinic_row(k) for k in range(1, count + 1)]
        render_report({"clinics": rows, "evaluation": {}})
        out = capsys.readouterr().out
        listed = "Per clinic: test AUC" in out
        if count == LISTED_CLINICS:
            assert listed and "Over the" not in out
            continue
        assert not listed and f"Over the {count} clinics" in out
        line = next(line for line in out.splitlines() if "ε spent" in line)
        spent = [cell for cell in line.split() if cell != "│"]
        assert spent[-6:] == [str(count), "0.010", "0.410", "2.010", "3.610", "4.010"]
        assert "δ 1e-05 (pld accountant); 40 clinic(s) refused or failed" in out
        assert out.count("refused: budget") == LISTED_CLINICS
        assert f"... and {40 - LISTED_CLINICS} more (report.json)" in out
