"""Stable key names of what the coordinator and the clinics say to each other.

Both sides import these constants so that a renamed key is a one-line change that cannot
drift. Only aggregates cross the wire: model arrays, metrics and privacy figures, never a
record.
"""

from __future__ import annotations

from typing import Final

# --- Node config (``flower-supernode --node-config`` / simulation manifest) -----------------
NODE_CLINIC_ID: Final = "clinic-id"
NODE_DATA_PATH: Final = "data-path"
NODE_STATE_DIR: Final = "state-dir"
NODE_DATASET_ID: Final = "dataset-id"
NODE_EPSILON_CAP: Final = "epsilon-cap"
NODE_DELTA: Final = "delta"
NODE_ACCOUNTANT: Final = "accountant"
# A training-set size the clinic declares public (then q, steps and δ derive from it and
# nothing is spent on a size estimate). Unset: a DP estimate is charged once per file.
NODE_PUBLIC_SIZE: Final = "public-size"
# The clinic's policy: what it lets any one run ask of it (schemas/clinic_policy.py).
NODE_ACCEPT_TASKS: Final = "accept-tasks"
NODE_ACCEPT_MAX_LAYERS: Final = "accept-max-layers"
NODE_ACCEPT_MAX_WIDTH: Final = "accept-max-width"
NODE_MAX_EPSILON_PER_RUN: Final = "max-epsilon-per-run"
NODE_MIN_NOISE_MULTIPLIER: Final = "min-noise-multiplier"
NODE_MAX_ROUNDS_PER_RUN: Final = "max-rounds-per-run"
NODE_MAX_EVAL_EPSILON: Final = "max-eval-epsilon"
# --- Run config (``[tool.flwr.app.config]`` / ``--run-config``) beyond the run settings -----
# The run settings' keys are their fields' metadata (``oralfed.schemas.settings``).
# Simulation only: where the manifest mapping ``partition-id`` to a clinic lives.
RUN_MANIFEST_PATH: Final = "manifest-path"
# A deployed insight query: the query as JSON (its presence makes the run a query), the
# small-cell floors, and whether floors below the defaults are allowed.
RUN_QUERY_JSON: Final = "query-json"
RUN_CELL_FLOOR: Final = "cell-floor"
RUN_CLINIC_MIN_RECORDS: Final = "clinic-min-records"
RUN_ALLOW_SMALL_FLOORS: Final = "allow-small-floors"

# --- Train / evaluate config sent by the coordinator -----------------------------------------
CFG_ROUND: Final = "server-round"  # set by Flower's strategies
CFG_TOTAL_ROUNDS: Final = "total-rounds"
CFG_LOCAL_EPOCHS: Final = "local-epochs"
CFG_BATCH_SIZE: Final = "batch-size"
CFG_LEARNING_RATE: Final = "learning-rate"
CFG_CLIP_NORM: Final = "clip-norm"
CFG_TARGET_EPSILON: Final = "target-epsilon"
CFG_NOISE_MULTIPLIER: Final = "noise-multiplier"
CFG_PROXIMAL_MU: Final = "proximal-mu"  # set by Flower's FedProx
CFG_TASK: Final = "task"
CFG_SEED: Final = "seed"
CFG_HIDDEN_SIZES: Final = "hidden-sizes"
CFG_EVAL_EPSILON: Final = "eval-epsilon"  # ε per evaluation release
CFG_EVAL_COUNT: Final = "eval-count"  # evaluations planned in the run (the target covers them)
CFG_DP_ENGINE: Final = "dp-engine"  # a settings.DpEngineName (client/dp_engines.py)
# The OralFed run id. A resumed run is a new Flower run (a new ``msg.metadata.run_id``) but
# the same OralFed run: clinics charge their ledger, check per-run policy and find the
# releases they already made under this id (client/release_store.py).
CFG_RUN_ID: Final = "oralfed-run-id"

# --- Reply records ---------------------------------------------------------------------------
REPLY_ARRAYS: Final = "arrays"
REPLY_METRICS: Final = "metrics"
REPLY_CLINIC: Final = "clinic"  # ConfigRecord: identity and accountant (strings)

# FedAvg weighs by this: the clinic's public size (declared, or a charged DP estimate).
NUM_EXAMPLES: Final = "num-examples"
PUBLIC_SIZE_SOURCE: Final = "public-size-source"  # ConfigRecord: "declared" or "estimate"
# Evaluation: a noisy (2 labels x bins) score histogram, flattened, and its noise scale.
EVAL_HISTOGRAM: Final = "eval-histogram"
EVAL_NOISE_SCALE: Final = "eval-noise-scale"
EPSILON_SPENT: Final = "epsilon-spent"  # over the data set's whole ledger history
EPSILON_CAP: Final = "epsilon-cap"
DELTA: Final = "delta"
NOISE_MULTIPLIER: Final = "noise-multiplier"
SAMPLE_RATE: Final = "sample-rate"
DP_STEPS: Final = "dp-steps"

CLINIC_ID: Final = "clinic-id"
ACCOUNTANT: Final = "accountant"

# --- Error codes in refusal replies ----------------------------------------------------------
ERROR_BUDGET_EXCEEDED: Final = 4201
ERROR_DATA_REFUSED: Final = 4202
ERROR_POLICY_REFUSED: Final = 4203  # outside the clinic's policy, or unreadable

# --- Aggregate-insight queries (client/query.py, server/insights.py) -------------------------
QUERY_SPEC: Final = "query-spec"  # the QuerySpec as JSON
QUERY_CLINIC_MIN_RECORDS: Final = "clinic-min-records"
QUERY_NOISY_COUNTS: Final = "noisy-counts"  # one per cell
QUERY_COUNT_NOISE_SD: Final = "count-noise-sd"
QUERY_NOISY_STATISTIC: Final = "noisy-statistic"  # per cell (x bins), flattened
QUERY_STATISTIC_NOISE_SD: Final = "statistic-noise-sd"

# --- What each reply field is, privacy-wise (docs/privacy.md lists the same) -----------------
# Every value a clinic puts in a train, evaluate or query reply is one of these; the
# adversarial tests check that a reply carries no key outside this table.
DP_RELEASE: Final = "a DP release charged to the ledger before it leaves"
DERIVED: Final = "a function of public configuration and already-charged releases"
DECLARED_PUBLIC: Final = "declared public by the clinic (node config)"
SECAGG_PROTOCOL: Final = "SecAgg+ keys, node ids and secret shares: fresh randomness, no data"
# Flower's SecAgg+ mod's reply keys (flwr.common.secure_aggregation.secaggplus_constants.Key)
SECAGG_MASKED_UPDATE: Final = "masked_params"
SECAGG_PROTOCOL_KEYS: Final = ("pk1", "pk2", "dsts", "ctxts", "nids", "shares")
REPLY_FIELDS: Final[dict[str, str]] = {
    REPLY_ARRAYS: DP_RELEASE,  # the DP-SGD model update
    EVAL_HISTOGRAM: DP_RELEASE,  # noisy score histogram (discrete Laplace)
    QUERY_NOISY_COUNTS: DP_RELEASE,  # per-cell counts, exact discrete noise
    QUERY_NOISY_STATISTIC: DP_RELEASE,  # per-cell sums / bins, snapped, exact discrete noise
    QUERY_COUNT_NOISE_SD: DERIVED,  # from the query's ε, δ and mechanism
    QUERY_STATISTIC_NOISE_SD: DERIVED,  # the same, and the contract's bounds
    NUM_EXAMPLES: DERIVED,  # the public size: declared, or the charged DP size estimate
    EPSILON_SPENT: DERIVED,  # the accountant over the charged events' public parameters
    NOISE_MULTIPLIER: DERIVED,  # calibrated from the target, q and steps (public inputs)
    SAMPLE_RATE: DERIVED,  # batch size / public size
    DP_STEPS: DERIVED,  # epochs x ceil(1 / q)
    EVAL_NOISE_SCALE: DERIVED,  # 1 / eval-epsilon, the coordinator's own setting
    PUBLIC_SIZE_SOURCE: DERIVED,  # "declared" or "estimate": which of the two
    EPSILON_CAP: DECLARED_PUBLIC,
    DELTA: DECLARED_PUBLIC,  # the node's δ, or a default from public values
    CLINIC_ID: DECLARED_PUBLIC,
    ACCOUNTANT: DECLARED_PUBLIC,
    SECAGG_MASKED_UPDATE: DP_RELEASE,  # the bounded, weighted DP-SGD update, masked
    **dict.fromkeys(SECAGG_PROTOCOL_KEYS, SECAGG_PROTOCOL),
}
