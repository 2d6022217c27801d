"""The coordinator database under its Alembic migrations, on SQLite and a real PostgreSQL.

The PostgreSQL server is a throwaway cluster (initdb + pg_ctl in a temporary folder, on a
free 127.0.0.1 port), started as the ``postgres`` user when the tests run as root (initdb
refuses root). scripts/test.sh installs Debian's ``postgresql`` package when it is missing;
where no server can be started the PostgreSQL tests skip and say why.
"""

from __future__ import annotations

import glob
import importlib
import os
import pkgutil
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

import oralfed.server
from oralfed.schemas import protocol
from oralfed.server.coordinator_db import Base, CoordinatorStore, RunRow
from oralfed.server.history import ClinicResult, RoundRecord


def postgres_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def as_postgres_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as ``postgres`` there."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb); scripts/test.sh installs it as root")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    workdir = Path(tempfile.mkdtemp(prefix="oralfed-pg-"))
    data, port = workdir / "data", free_port()
    if os.geteuid() == 0:
        try:
            shutil.chown(workdir, "postgres")
        except (LookupError, PermissionError) as error:
            shutil.rmtree(workdir)
            pytest.skip(f"no usable postgres system user: {error}")
    pg_ctl = as_postgres_user(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(workdir / "server.log")]
    )
    try:
        subprocess.run(
            as_postgres_user(
                [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*pg_ctl, "-o", options, "-w", "start"], check=True, capture_output=True, timeout=60
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not be started here: {error}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


def a_round() -> RoundRecord:
    record = RoundRecord(1)
    record.results.append(
        ClinicResult(
            "clinic-01",
            "train",
            "ok",
            {protocol.NUM_EXAMPLES: 100.0, protocol.EPSILON_SPENT: 1.2, "nan": float("nan")},
            "pld",
        )
    )
    record.results.append(ClinicResult("clinic-02", "train", "refused", reason="budget"))
    return record


def exercise(url: str) -> None:
    store = CoordinatorStore(url)
    try:
        store.start_run("run-1", {"rounds": 2, "strategy": "fedavg"})
        store.record_round("run-1", a_round())
        store.finish_run("run-1", "completed")
        (run,) = store.runs()
        assert run.status == "completed" and run.finished_at is not None
        (summary,) = store.rounds("run-1")
        clinic = summary.summary["clinics"][0]
        assert clinic["metrics"]["nan"] is None  # JSON columns refuse NaN
        assert summary.summary["refused"] == [{"clinic": "clinic-02", "reason": "budget"}]
    finally:
        store.close()
    reopened = CoordinatorStore(url)  # upgrading an up-to-date schema changes nothing
    try:
        assert [r.run_id for r in reopened.runs()] == ["run-1"]
    finally:
        reopened.close()


def register_all_models() -> None:
    """Tables on the coordinator's ``Base`` may be declared in any ``server`` module (e.g.
    the insights API's tokens): import them all so the comparison sees every model."""
    for module in pkgutil.iter_modules(oralfed.server.__path__):
        importlib.import_module(f"oralfed.server.{module.name}")


def assert_schema_matches_models(url: str) -> None:
    register_all_models()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            drift = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    assert not drift, f"server/coordinator_db.py differs from its migrations: {drift}"
    assert version is not None


def test_sqlite_store_is_migrated_and_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'coordinator.db'}"
    exercise(url)
    assert_schema_matches_models(url)


def test_a_database_made_before_migrations_is_stamped_and_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_engine(url)
    RunRow.__table__.create(engine)  # type: ignore[attr-defined]
    for name in ("coordinator_rounds", "coordinator_clinic_results"):
        Base.metadata.tables[name].create(engine)
    engine.dispose()
    exercise(url)
    assert_schema_matches_models(url)


def test_postgresql_store_is_migrated_and_works(postgres_url: str) -> None:
    exercise(postgres_url)
    assert_schema_matches_models(postgres_url)
    engine = create_engine(postgres_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"coordinator_runs", "coordinator_rounds", "alembic_version"} <= tables
