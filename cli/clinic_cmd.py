"""``oralfed clinic``: run a clinic's node (a Flower SuperNode) from its startup kit, and
keep its state: back it up, restore it, rotate its audit signing key."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from oralfed.cli.output import UserError, console, error_console
from oralfed.deploy.clinic_backup import (
    backup_state_dir,
    passphrase_from_file,
    restore_state_dir,
)
from oralfed.deploy.kit import ClinicKit
from oralfed.deploy.processes import supervise
from oralfed.deploy.supernode import (
    DEFAULT_NODE_PORT,
    NodeRuntime,
    SuperNodeOptions,
    check_clinic_data,
    read_policy,
    start_supernode,
)
from oralfed.privacy.audit_targets import verify_target
from oralfed.privacy.key_rotation import rotate_signing_key
from oralfed.privacy.ledger import LEDGER_FILE, migrate_ledger_file
from oralfed.schemas.clinic_policy import ClinicPolicy
from oralfed.schemas.errors import ExitCode
from oralfed.schemas.node_config import DEFAULT_EPSILON_CAP

app = typer.Typer(help="Run a clinic node.", no_args_is_help=True)


@app.command()
def start(
    kit: Annotated[Path, typer.Option(help="The clinic's startup kit folder.")],
    data: Annotated[Path, typer.Option(help="The clinic's contract file (CSV or Parquet).")],
    state_dir: Annotated[
        Path | None,
        typer.Option(help="Ledger and node state (default: the kit's state folder)."),
    ] = None,
    superlink: Annotated[
        str | None, typer.Option(help="Coordinator host:port (default: the kit's).")
    ] = None,
    port: Annotated[
        int, typer.Option(help="The node's local runtime port (distinct per node on a host).")
    ] = DEFAULT_NODE_PORT,
    epsilon_cap: Annotated[
        float, typer.Option(help="Lifetime ε cap of a new ledger.")
    ] = DEFAULT_EPSILON_CAP,
    public_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="A training-set size this clinic declares public (else a DP estimate is "
            "charged once per file).",
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="JSON file of policy keys bounding what a run may ask (accept-tasks, "
            "accept-max-layers, accept-max-width, max-epsilon-per-run, min-noise-multiplier, "
            "max-rounds-per-run, max-eval-epsilon); default: docs/privacy.md's defaults."
        ),
    ] = None,
    runtime: Annotated[
        NodeRuntime,
        typer.Option(
            help="warm: fork each message's process from one that has the app imported and "
            "the file loaded (docs/deployment.md); flower: Flower's own SuperExec, a new "
            "interpreter per message."
        ),
    ] = NodeRuntime.WARM,
) -> None:
    """Validate DATA against the contract, then connect to the coordinator over TLS with
    the kit's key. Refuses to start on a file that fails the contract."""
    if not data.is_file():
        raise UserError(f"--data {data}: no such file")
    if not epsilon_cap > 0:
        raise UserError(f"--epsilon-cap must be positive, got {epsilon_cap}")
    clinic_kit = ClinicKit.load(kit)
    options = SuperNodeOptions(
        kit,
        data,
        state_dir,
        superlink,
        port,
        epsilon_cap,
        public_size,
        read_policy(policy) if policy else ClinicPolicy(),
        runtime,
    )
    node = options.clinic_node(clinic_kit)
    checked = check_clinic_data(node)
    console.print(
        f"{data}: {checked.rows_read} rows read, {checked.rows_rejected} rejected; "
        f"{checked.n_train} training and {checked.n_test} test research-tier rows"
    )
    processes = start_supernode(options, clinic_kit, node)
    address = options.superlink or clinic_kit.superlink
    logs = ", ".join(str(node.state_dir / f"{started.name}.log") for started in processes)
    console.print(
        f"Clinic node [bold]{node.clinic_id}[/] started for {address} (TLS, node key "
        f"{clinic_kit.private_key(kit)}, {runtime} runtime); logs {logs}"
    )
    name, code = supervise(processes)
    if code:
        raise UserError(
            f"the clinic's {name} exited with code {code}; see {node.state_dir / name}.log "
            "('Failed to activate SuperNode': this kit's key is not registered or was removed)"
        )


@app.command()
def migrate(
    state_dir: Annotated[
        Path, typer.Option(help="The clinic's state directory (holds ledger.db).")
    ],
) -> None:
    """Bring the clinic's ledger (budgets, charges, audit log) to this release's schema.

    Every opening of the ledger does this too; the command is for an operator who wants it
    done, and seen, before a node starts. A ledger written by a newer release is refused.
    """
    path = state_dir / LEDGER_FILE
    before, after = migrate_ledger_file(path)
    if before == after:
        console.print(f"{path}: already at schema revision {after}; nothing to do")
    else:
        was = "made before migrations" if before is None else f"at revision {before}"
        console.print(f"{path}: migrated to schema revision {after} (was {was})")


# The environment variable a backup passphrase may come from (never a command-line option:
# it would land in the shell's history and in every process listing).
PASSPHRASE_ENV = "ORALFED_BACKUP_PASSPHRASE"

StateDirArg = Annotated[Path, typer.Option(help="The clinic's state directory.")]
PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        help=f"A file whose first line is the archive's passphrase (else ${PASSPHRASE_ENV}, "
        "else a hidden prompt)."
    ),
]


@app.command("rotate-key")
def rotate_key(
    state_dir: StateDirArg,
    reason: Annotated[
        str, typer.Option(help="Why, for the audit log.")
    ] = "rotated by the operator",
) -> None:
    """Replace the state dir's audit signing key by a new one, recorded in its audit log.

    The rotation entry is signed by the old key (by the new one if the old private key was
    lost) and names the new key; `oralfed audit verify` follows the chain. Stop the node
    first. The old public key stays in the state dir for auditors.
    """
    outcome = rotate_signing_key(state_dir, reason=reason)
    signed = "the old key" if outcome.signed_by_previous else "the new key (the old one is lost)"
    console.print(
        f"{'finished an interrupted rotation' if outcome.resumed else 'rotated'} the audit "
        f"signing key of {state_dir}: {outcome.previous_signer[:16]}… → "
        f"{outcome.new_signer[:16]}…, audit entry {outcome.seq} signed by {signed}.\n"
        f"Old public key kept at {outcome.retired_public_key}; give auditors the new one, "
        f"{outcome.public_key}.",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def backup(
    state_dir: StateDirArg,
    out: Annotated[Path, typer.Option(help="The archive to write (a new file).")],
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Write an encrypted, authenticated archive of the clinic's state: ledger and audit
    log (consistent snapshots), keys, calibration cache, public sizes, stored releases."""
    outcome = backup_state_dir(state_dir, out, _passphrase(passphrase_file, confirm=True))
    console.print(
        f"wrote {outcome.archive}: {len(outcome.files)} files "
        f"({len(outcome.databases)} database snapshot(s)), key "
        f"{(outcome.key_fingerprint or 'none')[:16]}…",
        highlight=False,
        soft_wrap=True,
    )
    if outcome.skipped:
        console.print(f"left out (transient): {', '.join(outcome.skipped)}", highlight=False)
    console.print(
        "Keep the passphrase apart from the archive: without it nothing can be restored.",
        highlight=False,
    )


@app.command()
def restore(
    archive: Annotated[Path, typer.Option("--from", help="An archive from `clinic backup`.")],
    state_dir: StateDirArg,
    passphrase_file: PassphraseFileOption = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Restore over a state dir that holds a state (it is kept aside, key files "
            "and all).",
        ),
    ] = False,
) -> None:
    """Restore a clinic's state dir from an archive, after authenticating all of it; then
    verify its audit log. Refuses a state dir that holds a state unless --replace."""
    outcome = restore_state_dir(
        archive, state_dir, _passphrase(passphrase_file, confirm=False), replace=replace
    )
    if outcome.replaced is not None:
        console.print(f"the previous state dir is kept at {outcome.replaced}", highlight=False)
    console.print(
        f"restored {len(outcome.files)} files into {outcome.state_dir} (backup of "
        f"{outcome.source} taken {outcome.created_at}; key "
        f"{(outcome.key_fingerprint or 'none')[:16]}…)",
        highlight=False,
        soft_wrap=True,
    )
    report = verify_target(state_dir=state_dir)
    if not report.ok:
        error_console.print(
            f"[bold red]its audit log does NOT verify[/] ({len(report.result.failures)} "
            f"problem(s)): run `oralfed audit verify --state-dir {state_dir}`",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(ExitCode.VERIFICATION_FAILED)
    console.print(
        f"audit log verified: {report.result.entries} entries, head "
        f"{report.result.head_hash[:16]}…",
        highlight=False,
    )


def _passphrase(path: Path | None, *, confirm: bool) -> str:
    """The archive passphrase: from a file, the environment, or a hidden prompt."""
    if path is not None:
        return passphrase_from_file(path)
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if sys.stdin.isatty():
        return str(typer.prompt("Backup passphrase", hide_input=True, confirmation_prompt=confirm))
    raise UserError(
        f"no passphrase: give --passphrase-file FILE or set {PASSPHRASE_ENV} (an interactive "
        "terminal is asked instead)"
    )
