"""The clinic's side of an aggregate query: consent first, charge, then noisy parts only.

Order is the privacy invariant, as for training: the clinic keeps only rows whose patients
allowed statistics (``statistics`` or ``research`` tier), charges the query's exact
mechanism to its ledger (refusing if the cap would be passed), and only then computes and
replies with noisy per-cell aggregates. No true count, not even the number of rows used,
leaves the clinic. The noise is discrete, from exact samplers fed by the operating system's
entropy at every query (see :mod:`privacy.mechanisms`): a seed chosen by the coordinator
would let it subtract the noise, and float noise would leak through its rounding.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Message

from oralfed.client.budget import open_budget
from oralfed.client.replies import refusal
from oralfed.privacy.accountants import UnsupportedEvent
from oralfed.privacy.ledger import BudgetExceeded, PrivacyLedger
from oralfed.privacy.mechanisms import (
    CLINIC_MIN_RECORDS,
    Bounds,
    LocalRelease,
    NoiseCalibration,
    calibrate,
    release_local,
    releases_for,
)
from oralfed.schemas import protocol
from oralfed.schemas.contract import PatientRecord
from oralfed.schemas.importer import ImportResult, import_file
from oralfed.schemas.node_config import ClinicNode
from oralfed.schemas.query import QueryError, QuerySpec, parse_query
from oralfed.schemas.query_messages import ClinicAnswer, ClinicRefusal
from oralfed.schemas.records import record_value


def statistics_records(result: ImportResult) -> list[PatientRecord]:
    """Rows whose patients allowed statistics, each patient once (first row kept)."""
    seen: set[str] = set()
    records = []
    for record in result.accepted:
        if record.consent_tier.allows_statistics and record.patient_ref not in seen:
            seen.add(record.patient_ref)
            records.append(record)
    return records


def local_release(
    records: list[PatientRecord],
    spec: QuerySpec,
    calibration: NoiseCalibration,
    min_records: int = CLINIC_MIN_RECORDS,
) -> LocalRelease:
    """The noisy parts of ``spec`` over already consent-filtered ``records`` (exact discrete
    samplers: no generator is taken, none can be searched)."""
    values = spec.values(records)
    bounds = spec.bounds()
    return release_local(
        spec.cell_indices(records),
        spec.n_cells,
        calibration,
        statistic=spec.statistic,
        values=None if values is None else np.nan_to_num(values),  # missing: cell index -1
        bounds=None if bounds is None else Bounds(*bounds),
        edges=spec.edges(),
        min_records=min_records,
    )


def answer_query(
    node: ClinicNode,
    spec: QuerySpec,
    run_id: str,
    min_records: int = CLINIC_MIN_RECORDS,
) -> ClinicAnswer | ClinicRefusal:
    """Everything a clinic does for one query, in the order privacy requires.

    ``min_records`` below :data:`~privacy.mechanisms.CLINIC_MIN_RECORDS` is raised to it:
    the clinic's own floor is not the coordinator's to lower. A clinic whose ledger counts
    with an accountant that cannot analyse the discrete mechanism (prv) refuses, charging
    nothing.
    """
    result = import_file(node.data_path)
    records = statistics_records(result)  # consent, before anything is computed
    with PrivacyLedger.in_state_dir(node.state_dir) as ledger:
        budget = open_budget(ledger, node)
        try:
            calibration = calibrate(
                spec.mechanism.value,
                spec.epsilon,
                min(spec.delta, budget.delta),  # the guarantee holds at both δs
                releases_for(spec.statistic),
                budget.accountant,
            )
            charge = ledger.charge(
                node.dataset_id,
                calibration.event,
                run_id=run_id,
                data_fingerprint=result.fingerprint,
                note=f"query: {spec.describe()} (ε={spec.epsilon:g}, δ={spec.delta:g})",
            )
        except BudgetExceeded as error:
            return ClinicRefusal(node.clinic_id, protocol.ERROR_BUDGET_EXCEEDED, str(error))
        except UnsupportedEvent as error:
            return ClinicRefusal(node.clinic_id, protocol.ERROR_DATA_REFUSED, str(error))
    release = local_release(
        records, spec, calibration, min_records=max(min_records, CLINIC_MIN_RECORDS)
    )
    statistic = release.parts.get(spec.statistic or "")
    return ClinicAnswer(
        clinic_id=node.clinic_id,
        counts=release.parts["count"].values.ravel().astype(float).tolist(),
        count_noise_sd=release.parts["count"].noise_sd,
        statistic=[] if statistic is None else statistic.values.ravel().astype(float).tolist(),
        statistic_noise_sd=0.0 if statistic is None else statistic.noise_sd,
        noise_multiplier=calibration.noise_multiplier,
        epsilon_spent=charge.epsilon_after,
        epsilon_cap=budget.epsilon_cap,
        delta=budget.delta,
        accountant=budget.accountant,
    )


def handle_query(msg: Message, node: ClinicNode) -> Message:
    """The ClientApp's ``query`` handler: decode, answer (or refuse), encode."""
    config = msg.content["config"]
    try:
        spec = parse_query(json.loads(str(config[protocol.QUERY_SPEC])))
    except (QueryError, json.JSONDecodeError, KeyError) as error:
        return refusal(msg, protocol.ERROR_DATA_REFUSED, node.clinic_id, f"bad query: {error}")
    min_records = record_value(
        config, protocol.QUERY_CLINIC_MIN_RECORDS, int, default=CLINIC_MIN_RECORDS
    )
    answer = answer_query(node, spec, str(msg.metadata.run_id), min_records)
    if isinstance(answer, ClinicRefusal):
        return refusal(msg, answer.code, answer.clinic_id, answer.reason)
    return Message(content=answer.to_content(), reply_to=msg)
