"""``oralfed audit``: verify, export, budget; bad input gets a clear error, never a false
"verified"."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from oralfed.privacy.audit_log import ROUND_COMPLETED, AuditLog
from oralfed.privacy.events import DpSgdEvent
from oralfed.privacy.keys import PUBLIC_KEY_FILE, load_or_create_signing_key
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas.errors import ExitCode
from oralfed.server.coordinator_db import CoordinatorStore
from tests.conftest import run_cli

ROUND = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=100)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``oralfed audit ARGS`` in-process."""
    return run_cli(capsys, "audit", *args)


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clinic state dir with a registered data set and two charged rounds (read-only use)."""
    state_dir = tmp_path_factory.mktemp("clinic")
    with PrivacyLedger.in_state_dir(state_dir) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=5.0, delta=1e-5)
        for round_number in (1, 2):
            ledger.charge("clinic-01", ROUND, run_id="run-1", round=round_number)
    return state_dir


def test_verify_prints_the_head_and_passes(capsys, clinic: Path) -> None:
    code, out, _ = run(capsys, "verify", "--state-dir", str(clinic), "--json")
    result = json.loads(out)
    assert code == 0
    assert (result["verified"], result["entries"], result["head_seq"]) == (True, 3, 3)
    assert result["ledger_checked"] is True
    code, out, _ = run(
        capsys, "verify", "--state-dir", str(clinic), "--expect-head", result["head_hash"]
    )
    assert code == 0 and "VERIFIED" in out and result["head_hash"] in out
    assert "the ledger's rows match them" in out


def tamper(clinic: Path, tmp_path: Path, sql: str) -> Path:
    """A copy of the clinic's state dir with ``sql`` run on its database."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("ledger.db", PUBLIC_KEY_FILE):
        (copy / name).write_bytes((clinic / name).read_bytes())
    connection = sqlite3.connect(copy / "ledger.db")
    connection.execute(sql)
    connection.commit()
    connection.close()
    return copy


def test_tampered_log_exits_1_naming_the_entry(capsys, clinic: Path, tmp_path: Path) -> None:
    copy = tamper(
        clinic,
        tmp_path,
        "UPDATE audit_log SET payload = replace(payload, '2.0', '9.0') WHERE seq=2",
    )
    code, out, err = run(capsys, "verify", "--state-dir", str(copy))
    assert code == ExitCode.VERIFICATION_FAILED
    assert "VERIFIED:" not in out and "NOT VERIFIED" in err
    assert "entry 2 (position 2): changed" in err


def test_ledger_charge_deleted_behind_a_valid_log_exits_1(capsys, clinic, tmp_path) -> None:
    copy = tamper(clinic, tmp_path, "DELETE FROM ledger_charges WHERE id = 2")
    code, out, err = run(capsys, "verify", "--state-dir", str(copy))
    assert code == ExitCode.VERIFICATION_FAILED and "VERIFIED:" not in out
    assert (
        "entry 3 (position 3): ledger-mismatch: ledger charge 2 was audited but is missing" in err
    )
    assert "and the ledger's rows beside them" in err


def test_export_then_verify_the_file_with_the_nodes_key(capsys, clinic, tmp_path) -> None:
    out_file = tmp_path / "log.json"
    code, out, _ = run(capsys, "export", "--state-dir", str(clinic), "--out", str(out_file))
    assert code == 0 and "verified" in out
    document = json.loads(out_file.read_text())
    assert len(document["entries"]) == 3 and "BEGIN PUBLIC KEY" in document["public_key_pem"]
    code, out, _ = run(
        capsys,
        "verify",
        "--file",
        str(out_file),
        "--public-key",
        str(clinic / PUBLIC_KEY_FILE),
    )
    assert code == 0 and "VERIFIED" in out
    csv_file = tmp_path / "log.csv"
    code, _, _ = run(
        capsys, "export", "--state-dir", str(clinic), "--format", "csv", "--out", str(csv_file)
    )
    assert code == 0
    assert csv_file.read_text().splitlines()[0].startswith("seq,recorded_at,kind,payload")
    assert (tmp_path / "log.csv.pub.pem").is_file()


def test_another_clinics_key_is_never_verified(capsys, clinic: Path, tmp_path: Path) -> None:
    load_or_create_signing_key(tmp_path / "other")
    code, _, err = run(
        capsys,
        "verify",
        "--state-dir",
        str(clinic),
        "--public-key",
        str(tmp_path / "other" / PUBLIC_KEY_FILE),
    )
    assert code == ExitCode.VERIFICATION_FAILED and "foreign-key" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"SQLite format 3\x00" + b"\x13" * 2000, "not a readable audit database"),
        (b"", "holds no audit log"),
    ],
)
def test_corrupt_database_is_a_clear_error(capsys, tmp_path, content, message) -> None:
    (tmp_path / "ledger.db").write_bytes(content)
    code, out, err = run(capsys, "verify", "--state-dir", str(tmp_path))
    assert code == ExitCode.AUDIT and message in err and "Traceback" not in err + out
    assert "VERIFIED" not in out


def test_bad_key_file_and_bad_options_are_clear_errors(capsys, clinic, tmp_path) -> None:
    bad_key = tmp_path / "key.pem"
    bad_key.write_text("not a key")
    code, _, err = run(capsys, "verify", "--state-dir", str(clinic), "--public-key", str(bad_key))
    assert code == ExitCode.AUDIT and "not a PEM public key" in err
    code, _, err = run(capsys, "verify")
    assert code == ExitCode.USAGE and "exactly one of --state-dir and --file" in err
    code, _, err = run(capsys, "verify", "--file", str(bad_key))
    assert code == ExitCode.AUDIT and "not a JSON audit export" in err


def test_budget_by_round_json_and_plot(capsys, clinic: Path, tmp_path: Path) -> None:
    plot = tmp_path / "budget.png"
    code, out, _ = run(
        capsys, "budget", "--state-dir", str(clinic), "--by-round", "--json", "--plot", str(plot)
    )
    assert code == 0
    document = json.loads(out)
    assert document["verification"]["verified"] is True
    assert document["verification"]["ledger_checked"] is True
    (report,) = document["datasets"]
    assert report["dataset_id"] == "clinic-01" and report["accountant"] == "pld"
    assert [row["round"] for row in report["by_charge"]] == [1, 2]
    assert report["epsilon_spent"] == report["by_charge"][-1]["epsilon"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run(capsys, "budget", "--state-dir", str(clinic), "--by-round")
    assert code == 0 and "ε spent" in out and "cumulative ε after each charge" in out
    assert "checked against the signed audit log (3 entries" in out


def test_budget_of_a_ledger_edited_behind_its_log_exits_1(capsys, clinic, tmp_path) -> None:
    """The figures of an edited ledger are shown under its failures, never as verified, and
    no chart of them is drawn."""
    copy = tamper(clinic, tmp_path, "UPDATE ledger_datasets SET delta = 0.5")
    plot = tmp_path / "budget.png"
    code, out, err = run(capsys, "budget", "--state-dir", str(copy), "--plot", str(plot))
    assert code == ExitCode.VERIFICATION_FAILED
    assert "NOT VERIFIED" in err and "checked against the signed audit log" not in out
    assert "ledger data set 'clinic-01' has delta 0.5 where this entry set 1e-05" in err
    assert "not what its signed log supports" in err and "ε spent" in out
    assert not plot.exists() and "budget.png not written" in err
    code, out, _ = run(capsys, "budget", "--state-dir", str(copy), "--json")
    document = json.loads(out)
    assert code == ExitCode.VERIFICATION_FAILED
    assert document["verification"]["verified"] is False
    assert document["datasets"][0]["epsilon_spent"] == 0.0


def test_budget_bad_input(capsys, clinic: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "budget", "--state-dir", str(clinic), "--dataset", "nope")
    assert code == ExitCode.LEDGER and "not registered" in err
    code, _, err = run(capsys, "budget", "--state-dir", str(tmp_path))
    assert code == ExitCode.LEDGER and "no ledger.db" in err
    code, _, err = run(capsys, "budget", "--state-dir", str(clinic), "--plot", "x.jpg")
    assert code == ExitCode.USAGE and "--plot must name a .png file" in err


def test_empirical_audit_reports_both_bounds(capsys) -> None:
    code, out, _ = run(
        capsys,
        "empirical",
        "--canaries",
        "20",
        "--guesses",
        "5",
        "--noise-multiplier",
        "1.0",
        "--local-epochs",
        "1",
        "--accountant",
        "rdp",
        "--json",
    )
    result = json.loads(out)
    assert code == 0
    assert (result["canaries"], result["guesses"], result["accountant"]) == (20, 5, "rdp")
    assert 0 <= result["epsilon_lower_bound"] < result["epsilon_accounted"]
    # 5 guesses can never prove the accounted ε: inconclusive, which is not a failure
    assert result["verdict"] == "inconclusive" and result["consistent"] is False


@pytest.mark.parametrize(
    ("args", "message", "expected"),
    [
        (["--delta", "0"], "--delta must be between 0 and 1", ExitCode.USAGE),
        (["--delta", "1"], "--delta must be between 0 and 1", ExitCode.USAGE),
        (
            ["--canaries", "10", "--guesses", "11"],
            "--guesses must be between 1 and the canaries",
            ExitCode.USAGE,
        ),
        (
            ["--target-epsilon", "1", "--noise-multiplier", "1"],
            "give at most one of --target-epsilon and --noise-multiplier",
            ExitCode.USAGE,
        ),
        (["--noise-multiplier", "0.01"], "noise_multiplier must be", ExitCode.USAGE),
        (["--accountant", "nope"], "--accountant must be one of", ExitCode.USAGE),
        (["--data", "missing.csv"], "no such file", ExitCode.INVALID_DATA),
        (["--confidence", "1.5"], "--confidence must be between 0 and 1", ExitCode.USAGE),
    ],
)
def test_empirical_audit_bad_input(
    capsys, args: list[str], message: str, expected: ExitCode
) -> None:
    code, out, err = run(capsys, "empirical", "--noise-multiplier", "1.0", *args)
    assert code == expected and message in err and "Traceback" not in out + err


def test_coordinator_budget_view_is_labelled_as_reported(capsys, tmp_path: Path) -> None:
    log = AuditLog(
        CoordinatorStore.sqlite_file(tmp_path / "coordinator.db").engine,
        load_or_create_signing_key(tmp_path),
    )
    result = {
        "clinic_id": "clinic-01",
        "phase": "train",
        "status": "ok",
        "accountant": "pld",
        "metrics": {"epsilon-spent": 1.25, "epsilon-cap": 5.0, "delta": 1e-5},
    }
    log.append(ROUND_COMPLETED, {"run_id": "run-1", "round": 1, "clinics": [result]})
    code, out, _ = run(capsys, "budget", "--state-dir", str(tmp_path), "--json")
    view = json.loads(out)
    assert code == 0
    assert (view["reported_by_clinics"], view["coordinator_log_verified"]) == (True, True)
    assert view["clinics"][0]["epsilon_spent"] == 1.25
    code, out, _ = run(capsys, "budget", "--state-dir", str(tmp_path))
    assert code == 0 and "AS REPORTED BY THE CLINICS" in out
    code, out, _ = run(capsys, "verify", "--state-dir", str(tmp_path))
    assert code == 0 and "coordinator.db" in out
