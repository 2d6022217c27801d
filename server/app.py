"""The coordinator's Flower ServerApp: run the rounds, keep the record, save the model.

After every round it checkpoints the run (``oralfed.server.checkpoint``); a ServerApp whose
run folder holds a checkpoint continues that run: the same OralFed run id (which the
clinics get with every request, ``protocol.CFG_RUN_ID``), the same coordinator-database
row, the history so far, the round numbers where they left off.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from oralfed.privacy.audit_log import ROUND_COMPLETED, RUN_FINISHED, RUN_STARTED, AuditLog
from oralfed.privacy.keys import load_or_create_signing_key
from oralfed.schemas import protocol
from oralfed.schemas.files import write_json_atomically
from oralfed.schemas.model import RiskModel, build_model, save_model
from oralfed.schemas.model_record import model_record
from oralfed.schemas.settings import FederationSettings
from oralfed.schemas.state import coordinator_state_dir
from oralfed.server.checkpoint import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    Checkpoint,
    model_of,
    resumable,
    write_checkpoint,
)
from oralfed.server.coordinator_db import CoordinatorStore
from oralfed.server.history import FederationHistory, RoundRecord, history_from_summaries
from oralfed.server.prompt_grid import PromptGrid, ReplyProgress
from oralfed.server.rounds import ContinuedRounds
from oralfed.server.secure_aggregation import SecureAggregationGrid
from oralfed.server.strategy import RoundCallback, make_strategy

GLOBAL_MODEL_FILE = "global_model.pt"
COORDINATOR_URL_ENV = "ORALFED_COORDINATOR_URL"
HISTORY_FILE = "history.json"


@dataclass
class FederationOutcome:
    """What a finished (or halted) run leaves behind, for the report."""

    run_id: str
    settings: FederationSettings
    history: FederationHistory = field(default_factory=FederationHistory)
    model: RiskModel | None = None
    status: str = "running"
    message: str | None = None


def run_federation_rounds(
    grid: Grid,
    settings: FederationSettings,
    outcome: FederationOutcome,
    on_round_end: RoundCallback | None = None,
    checkpoint: Checkpoint | None = None,
    simulated_clinics: int | None = None,
) -> FederationOutcome:
    """Run ``settings.rounds`` rounds on ``grid`` (those after ``checkpoint``'s, when the run
    is resumed); fills ``outcome`` as it goes, so that a run halted half-way still reports
    what happened. In a simulation of ``simulated_clinics`` clinics, the first round waits
    for all of them to connect, and every round for each reply unless ``round-timeout`` is
    set (``FederationSettings.reply_timeout``)."""
    store = _open_store(settings)
    started: dict[str, object] = {"run_id": outcome.run_id, "settings": settings.public_dict()}
    if checkpoint is None:
        store.start_run(outcome.run_id, settings.public_dict())
    else:
        _continue_run(store, outcome, checkpoint)
        started["resumed_after_round"] = checkpoint.round
    # The coordinator's signed log of runs, rounds and participants (oralfed.privacy.audit_log).
    audit_log = AuditLog(store.engine, load_or_create_signing_key(_coordinator_state_dir(settings)))
    audit_log.append(RUN_STARTED, started)

    def round_ended(record: RoundRecord) -> None:
        if settings.out_dir is not None:  # first: a round the record has is a round resumed
            write_checkpoint(
                settings.out_dir,
                outcome.run_id,
                settings,
                outcome.history,
                strategy.clinic_of_node,
                rounds.arrays,
            )
        store.record_round(outcome.run_id, record)
        audit_log.append(ROUND_COMPLETED, {"run_id": outcome.run_id, **record.summary()})
        _write_history(settings, outcome.history)
        if on_round_end is not None:
            on_round_end(record)

    strategy = make_strategy(settings, outcome.history, round_ended, simulated_clinics)
    if settings.secure_aggregation:  # training rounds under SecAgg+; the strategy gets means
        secure_grid = SecureAggregationGrid(grid, settings)
        strategy.secure_rounds, grid = secure_grid.rounds, secure_grid
    if checkpoint is None:
        start = model_record(build_model(settings.hidden_sizes, seed=settings.seed))
    else:
        start = checkpoint.model
        strategy.clinic_of_node.update(checkpoint.clinic_of_node)
    done = checkpoint.round if checkpoint is not None else 0
    rounds = ContinuedRounds(strategy, done, start)
    run_config = {protocol.CFG_RUN_ID: outcome.run_id}  # clinics charge the OralFed run
    try:
        result = rounds.start(
            grid=grid,
            initial_arrays=start,
            num_rounds=settings.rounds - done,
            # Flower hands it to Grid.send_and_receive, where None waits for every reply.
            timeout=settings.reply_timeout(simulated_clinics is not None),  # type: ignore[arg-type]
            train_config=ConfigRecord({**settings.train_config(), **run_config}),
            evaluate_config=ConfigRecord({**settings.evaluate_config(), **run_config}),
        )
        model = model_of(result.arrays, settings)
        if settings.out_dir is not None:
            metadata = {"run_id": outcome.run_id, "rounds": settings.rounds}
            save_model(model, settings.out_dir / GLOBAL_MODEL_FILE, settings.task, metadata)
        outcome.model, outcome.status = model, "completed"
        store.finish_run(outcome.run_id, outcome.status)
    except BaseException as error:
        outcome.status, outcome.message = "halted", str(error) or type(error).__name__
        store.finish_run(outcome.run_id, outcome.status, outcome.message)
        raise
    finally:
        audit_log.append(
            RUN_FINISHED,
            {"run_id": outcome.run_id, "status": outcome.status, "message": outcome.message},
        )
        store.close()
    return outcome


def _continue_run(
    store: CoordinatorStore, outcome: FederationOutcome, checkpoint: Checkpoint
) -> None:
    """A resumed run is the same run in the coordinator database; a round the checkpoint
    holds but the database missed (a crash between the two writes) is recorded now."""
    store.continue_run(
        outcome.run_id,
        outcome.settings.public_dict(),
        f"resumed after round {checkpoint.round}",
    )
    recorded = {row.round for row in store.rounds(outcome.run_id)}
    for record in outcome.history.rounds:
        if record.round not in recorded:
            store.record_round(outcome.run_id, record)


def _open_store(settings: FederationSettings) -> CoordinatorStore:
    """The run's coordinator database: the run config's URL, else the one the coordinator
    was started with (``ORALFED_COORDINATOR_URL``, inherited from the SuperLink), else
    SQLite beside the run."""
    url = settings.coordinator_url or os.environ.get(COORDINATOR_URL_ENV)
    if url:
        return CoordinatorStore(url)
    return CoordinatorStore.sqlite_file(_coordinator_state_dir(settings) / "coordinator.db")


def _coordinator_state_dir(settings: FederationSettings) -> Path:
    """Where the coordinator keeps its database (unless given a URL) and audit signing key."""
    return settings.out_dir if settings.out_dir is not None else coordinator_state_dir()


def _write_history(settings: FederationSettings, history: FederationHistory) -> None:
    if settings.out_dir is None:
        return
    write_json_atomically(settings.out_dir / HISTORY_FILE, [r.summary() for r in history.rounds])


def make_server_app(
    settings: FederationSettings | None = None,
    outcome_sink: list[FederationOutcome] | None = None,
    on_round_end: RoundCallback | None = None,
    prompt_replies: bool = True,
    on_progress: Callable[[ReplyProgress], None] | None = None,
    simulated_clinics: int | None = None,
) -> ServerApp:
    """A ServerApp; without ``settings`` it reads Flower's run config (``flwr run .``).

    ``prompt_replies`` collects replies as they arrive (:class:`PromptGrid`, which tells
    ``on_progress`` how many clinics have replied); without it the rounds wait on Flower's
    grid as it is (its 3 s pulls: bench/deploy_overhead.py's baseline). The app of a
    simulation of ``simulated_clinics`` clinics waits for them all to connect, and its rounds
    for every clinic they asked unless ``round-timeout`` says otherwise."""
    app = ServerApp()

    @app.main()
    def main(flower_grid: Grid, context: Context) -> None:
        grid = PromptGrid(flower_grid, on_progress) if prompt_replies else flower_grid
        if settings is None and context.run_config.get(protocol.RUN_QUERY_JSON):
            # A deployment has one ServerApp: a run config holding a query asks a question
            # (`oralfed insights query --federation-dir`) instead of training.
            from oralfed.server.insights import QuerySettings, answer_one_query

            answer_one_query(grid, QuerySettings.from_run_config(dict(context.run_config)))
            return
        effective = settings or FederationSettings.from_run_config(context.run_config)
        checkpoint = _checkpoint_to_resume(effective)
        outcome = FederationOutcome(
            run_id=uuid.uuid4().hex if checkpoint is None else checkpoint.run_id,
            settings=effective,
            history=FederationHistory()
            if checkpoint is None
            else history_from_summaries(checkpoint.history),
        )
        if outcome_sink is not None:
            outcome_sink.append(outcome)
        run_federation_rounds(grid, effective, outcome, on_round_end, checkpoint, simulated_clinics)

    return app


def _checkpoint_to_resume(settings: FederationSettings) -> Checkpoint | None:
    """The checkpoint in the run folder, if it holds one (then the run is continued; see
    ``oralfed.server.checkpoint`` for what is refused)."""
    out_dir = settings.out_dir
    if out_dir is None or not (out_dir / CHECKPOINT_DIR / CHECKPOINT_FILE).exists():
        return None
    return resumable(out_dir, settings)


app = make_server_app()
