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
CFG_DP_ENGINE: Final = "dp-engine"  # a settings.DpEngineName (client/dp_engines.py)

# --- Reply records ---------------------------------------------------------------------------
REPLY_ARRAYS: Final = "arrays"
REPLY_METRICS: Final = "metrics"
REPLY_CLINIC: Final = "clinic"  # ConfigRecord: identity and accountant (strings)

NUM_EXAMPLES: Final = "num-examples"  # FedAvg weighs by this
TRAIN_LOSS: Final = "train-loss"
EVAL_LOSS: Final = "eval-loss"
EVAL_ACCURACY: Final = "eval-accuracy"
EVAL_AUC: Final = "eval-auc"
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

# --- Aggregate-insight queries (client/query.py, server/insights.py) -------------------------
QUERY_SPEC: Final = "query-spec"  # the QuerySpec as JSON
QUERY_CLINIC_MIN_RECORDS: Final = "clinic-min-records"
QUERY_NOISY_COUNTS: Final = "noisy-counts"  # one per cell
QUERY_COUNT_NOISE_SD: Final = "count-noise-sd"
QUERY_NOISY_STATISTIC: Final = "noisy-statistic"  # per cell (x bins), flattened
QUERY_STATISTIC_NOISE_SD: Final = "statistic-noise-sd"
