"""``oralfed dashboard``: tokens are printed once and stored hashed; a dashboard pointed at
the wrong place is refused with its name before anything is served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oralfed.deploy.dashboard.tokens import DASHBOARD_TOKENS_FILE
from oralfed.privacy.ledger import PrivacyLedger
from oralfed.schemas.errors import ExitCode
from tests.conftest import run_cli


def test_a_clinic_token_is_shown_once_and_stored_hashed(capsys, tmp_path: Path) -> None:
    with PrivacyLedger.in_state_dir(tmp_path) as ledger:
        ledger.ensure_dataset("clinic-01", epsilon_cap=5.0, delta=1e-5)
    code, out, _ = run_cli(
        capsys, "dashboard", "token", "create", "--state-dir", tmp_path, "--name", "officer"
    )
    token = out.strip().splitlines()[-1]
    assert code == 0 and token.startswith("ofd_")
    stored = json.loads((tmp_path / DASHBOARD_TOKENS_FILE).read_text())
    assert [entry["name"] for entry in stored.values()] == ["officer"]
    assert token.partition(".")[2] not in (tmp_path / DASHBOARD_TOKENS_FILE).read_text()
    assert (tmp_path / DASHBOARD_TOKENS_FILE).stat().st_mode & 0o777 == 0o600
    code, _, err = run_cli(
        capsys, "dashboard", "token", "create", "--state-dir", tmp_path, "--name", "officer"
    )
    assert code == ExitCode.USAGE and "'officer' has a token" in err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--state-dir", "{tmp}", "--runs", "{tmp}"), "give one of --state-dir"),
        (("--state-dir", "{tmp}/nowhere"), "no ledger.db"),
        (("--runs", "{tmp}/nowhere"), "no such folder"),
        (("--runs", "{tmp}", "--federation-dir", "{tmp}"), "not a federation folder"),
    ],
)
def test_a_dashboard_over_the_wrong_place_is_refused(
    capsys, tmp_path: Path, arguments: tuple[str, ...], message: str
) -> None:
    filled = [argument.format(tmp=tmp_path) for argument in arguments]
    code, out, err = run_cli(capsys, "dashboard", "serve", *filled)
    assert code == ExitCode.USAGE and message in err and "Traceback" not in out + err
