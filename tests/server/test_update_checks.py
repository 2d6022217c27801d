"""Every poisoned update of issue 11, through the real strategy's ``aggregate_train``.

Four honest clinics and one bad reply: each bad reply is rejected (named in the round's
record with what was wrong) or bounded (clipped to the norm bound), the global model stays
finite, and it stays within the stated distance of the honest clinics' aggregate:

    ‖global - honest‖ ≤ w_bad / W · (norm bound + largest honest update norm)

(``global - honest = w_bad / W · (x_bad - honest)``, and ``x_bad`` is at most the bound
away from the sent model, ``honest`` at most the largest honest norm), or exactly the
honest aggregate when the bad reply was rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from oralfed.schemas import protocol
from oralfed.schemas.model_record import PARAMETERS
from oralfed.schemas.settings import FederationSettings
from oralfed.server.report import build_run_report
from oralfed.server.strategy import FederationHalted
from oralfed.server.update_checks import ModelArrays, update_norm
from tests.adversarial.federation import (
    HIDDEN,
    aggregate,
    distance,
    honest_models,
    sent_model,
    strategy_for,
    weighted_mean,
)
from tests.adversarial.federation import clinic_reply as reply

HONEST = {"c1": 1_000.0, "c2": 1_500.0, "c3": 800.0, "c4": 1_200.0}  # clinic: public size
BAD_CLINIC, BAD_NODE, BAD_WEIGHT = "c5", 5, 1_100.0
SETTINGS = FederationSettings(min_clinics=3, hidden_sizes=HIDDEN)
SIZE = sent_model()[PARAMETERS].size  # the flat parameter vector's length


def honest_replies(models: dict[str, ModelArrays]) -> list[Message]:
    return [
        reply(node, clinic, models[clinic], HONEST[clinic])
        for node, clinic in enumerate(HONEST, start=1)
    ]


Corruption = Callable[[ModelArrays, ModelArrays], tuple[ModelArrays, Any]]


def _scaled_update(factor: float) -> Corruption:
    def corrupt(sent: ModelArrays, honest: ModelArrays) -> tuple[ModelArrays, Any]:
        return {
            n: (sent[n] + (honest[n] - sent[n]) * factor).astype(np.float32) for n in sent
        }, BAD_WEIGHT

    return corrupt


def _set(
    name: str, value: Callable[[np.ndarray], np.ndarray], weight: Any = BAD_WEIGHT
) -> Corruption:
    def corrupt(sent: ModelArrays, honest: ModelArrays) -> tuple[ModelArrays, Any]:
        return {**honest, name: value(honest[name])}, weight

    return corrupt


def _one(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def put(array: np.ndarray) -> np.ndarray:
        out = array.copy()
        out.flat[3] = value
        return out

    return put


def _weight(weight: Any) -> Corruption:
    return lambda sent, honest: (honest, weight)


# name: (corruption, what must happen to the bad reply, words its reason must contain)
CASES: dict[str, tuple[Corruption, str, str]] = {
    "all-NaN": (
        lambda sent, honest: ({n: np.full_like(v, np.nan) for n, v in honest.items()}, BAD_WEIGHT),
        "rejected",
        "non-finite",
    ),
    "one NaN": (_set(PARAMETERS, _one(float("nan"))), "rejected", "non-finite"),
    "+Inf": (_set(PARAMETERS, _one(float("inf"))), "rejected", "non-finite"),
    "-Inf": (_set(PARAMETERS, _one(float("-inf"))), "rejected", "non-finite"),
    "NaN num-examples": (_weight(float("nan")), "rejected", "num-examples"),
    "Inf num-examples": (_weight(float("inf")), "rejected", "num-examples"),
    "1e38 update": (
        lambda sent, honest: ({n: np.full_like(v, 1e38) for n, v in honest.items()}, BAD_WEIGHT),
        "clipped",
        "",
    ),
    "x100": (_scaled_update(100.0), "clipped", ""),
    "sign-flipped": (_scaled_update(-1.0), "accepted", ""),
    "broadcastable (1, n) row": (
        _set(PARAMETERS, lambda a: a[None, :]),
        "rejected",
        f"float32[1, {SIZE}]",
    ),
    "scalar": (
        _set(PARAMETERS, lambda a: np.float32(40.0) * np.ones((), np.float32)),
        "rejected",
        "float32[]",
    ),
    "num-examples 1e12": (_weight(1e12), "rejected", "max-clinic-weight"),
    "extra value": (
        _set(PARAMETERS, lambda a: np.concatenate([a, a[:1]])),
        "rejected",
        f"[{SIZE + 1}]",
    ),
    "column vector": (_set(PARAMETERS, lambda a: a.reshape(-1, 1)), "rejected", f"[{SIZE}, 1]"),
    "float64 arrays": (_set(PARAMETERS, lambda a: a.astype(np.float64)), "rejected", "float64"),
    "extra array": (
        lambda sent, honest: ({**honest, "backdoor": np.ones(3, np.float32)}, BAD_WEIGHT),
        "rejected",
        "backdoor",
    ),
    "missing array": (
        lambda sent, honest: ({n: v for n, v in honest.items() if n != PARAMETERS}, BAD_WEIGHT),
        "rejected",
        PARAMETERS,
    ),
    "num-examples 0 (weights summing to 0)": (_weight(0), "rejected", "num-examples"),
    "negative num-examples (weights summing to 0)": (
        _weight(-sum(HONEST.values())),
        "rejected",
        "num-examples",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_poisoned_update_is_rejected_or_bounded(case: str, tmp_path: Path) -> None:
    corrupt, expected, words = CASES[case]
    sent = sent_model()
    models = honest_models(sent, HONEST)
    bad_arrays, bad_weight = corrupt(sent, models["c1"])
    settings = replace(SETTINGS, out_dir=tmp_path)
    strategy = strategy_for(settings, sent)
    replies = [*honest_replies(models), reply(BAD_NODE, BAD_CLINIC, bad_arrays, bad_weight)]

    global_model = aggregate(strategy, replies)

    record = strategy.history.rounds[-1]
    bad = next(r for r in record.results if r.clinic_id == BAD_CLINIC)
    honest = weighted_mean(models, HONEST)
    assert all(np.isfinite(v).all() for v in global_model.values())
    assert sorted(record.summary()["trained"]) == sorted(
        [*HONEST, *([] if expected == "rejected" else [BAD_CLINIC])]
    )
    if expected == "rejected":
        assert bad.status == "rejected" and words in (bad.reason or ""), bad.reason
        assert record.summary()["rejected"] == [
            {"clinic": BAD_CLINIC, "phase": "train", "reason": bad.reason}
        ]
        assert distance(global_model, honest) < 1e-5
    else:
        assert bad.status == "ok" and bad.update_norm is not None
        bound = settings.update_norm_bound
        assert (bad.clipped_to == bound) == (expected == "clipped")
        if expected == "clipped":
            assert bad.update_norm > bound
            assert record.summary()["clipped"] == [
                {"clinic": BAD_CLINIC, "norm": bad.update_norm, "bound": bound}
            ]
        largest_honest = max(update_norm(m, sent) for m in models.values())
        share = bad_weight / (sum(HONEST.values()) + bad_weight)
        assert distance(global_model, honest) <= share * (bound + largest_honest) * 1.0001
    assert (tmp_path / "models" / "round-001.pt").is_file()


def test_honest_updates_are_neither_clipped_nor_changed() -> None:
    sent = sent_model()
    models = honest_models(sent, HONEST)
    strategy = strategy_for(SETTINGS, sent)
    global_model = aggregate(strategy, honest_replies(models))
    results = strategy.history.rounds[-1].results
    assert all(r.status == "ok" and r.clipped_to is None for r in results)
    assert [r.update_norm for r in results] == pytest.approx(
        [update_norm(models[c], sent) for c in HONEST]
    )
    assert distance(global_model, weighted_mean(models, HONEST)) < 1e-5


def test_a_node_that_claims_another_clinics_identity_is_rejected() -> None:
    """Round 1 settles who is who; in round 2 node 5 (c5) and a new node 6 claim c1 (node
    1's) and node 2 claims c3 (switching identity): all rejected by name, the rest count."""
    sent = sent_model()
    models = honest_models(sent, HONEST)
    strategy = strategy_for(SETTINGS, sent)
    aggregate(strategy, [*honest_replies(models), reply(BAD_NODE, BAD_CLINIC, models["c1"], 900)])
    strategy.sent[2] = sent
    replies = honest_replies(models)
    replies[1] = reply(2, "c3", models["c2"], HONEST["c2"])
    replies.append(reply(BAD_NODE, "c1", models["c1"], BAD_WEIGHT))
    replies.append(reply(6, "c1", models["c1"], BAD_WEIGHT))

    global_model = aggregate(strategy, replies, server_round=2)

    record = strategy.history.rounds[-1]
    rejected = {(r["clinic"], r["reason"]) for r in record.summary()["rejected"]}
    assert rejected == {
        (
            "c3",
            "node 2 claims clinic 'c3' but first claimed 'c2'; a node keeps the identity "
            "it first claimed",
        ),
        (
            "c1",
            "node 5 claims clinic 'c1' but first claimed 'c5'; a node keeps the identity "
            "it first claimed",
        ),
        ("c1", "node 6 claims clinic 'c1', which is node 1's"),
    }
    kept = {c: models[c] for c in ("c1", "c3", "c4")}
    assert distance(global_model, weighted_mean(kept, HONEST)) < 1e-5
    assert strategy.clinic_of_node == {1: "c1", 2: "c2", 3: "c3", 4: "c4", 5: BAD_CLINIC}


def test_two_new_nodes_claiming_one_clinic_are_both_rejected() -> None:
    sent = sent_model()
    models = honest_models(sent, HONEST)
    strategy = strategy_for(SETTINGS, sent)
    replies = [*honest_replies(models), reply(BAD_NODE, "c1", models["c1"], BAD_WEIGHT)]
    global_model = aggregate(strategy, replies)
    record = strategy.history.rounds[-1]
    assert [r["clinic"] for r in record.summary()["rejected"]] == ["c1", "c1"]
    assert "2 nodes (1, 5) claim clinic 'c1'" in record.summary()["rejected"][0]["reason"]
    kept = {c: models[c] for c in ("c2", "c3", "c4")}
    assert distance(global_model, weighted_mean(kept, HONEST)) < 1e-5
    assert 1 not in strategy.clinic_of_node and BAD_NODE not in strategy.clinic_of_node


def test_a_non_finite_metric_or_an_unnamed_reply_is_rejected() -> None:
    sent = sent_model()
    models = honest_models(sent, HONEST)
    strategy = strategy_for(SETTINGS, sent)
    unnamed = reply(6, "c6", models["c2"], 700)
    unnamed.content.config_records.pop(protocol.REPLY_CLINIC)
    replies = [
        *honest_replies(models),
        reply(BAD_NODE, BAD_CLINIC, models["c1"], BAD_WEIGHT, **{protocol.EPSILON_SPENT: np.nan}),
        unnamed,
    ]
    aggregate(strategy, replies)
    rejected = strategy.history.rounds[-1].summary()["rejected"]
    assert rejected == [
        {"clinic": "c5", "phase": "train", "reason": "metric 'epsilon-spent' is not finite: nan"},
        {"clinic": "node-6", "phase": "train", "reason": "the reply names no clinic"},
    ]


def test_too_few_valid_updates_halt_the_run_naming_the_rejected() -> None:
    sent = sent_model()
    models = honest_models(sent, HONEST)
    strategy = strategy_for(SETTINGS, sent)
    replies = [
        *honest_replies(models)[:2],
        reply(5, "c5", {n: np.full_like(v, np.nan) for n, v in sent.items()}, BAD_WEIGHT),
        reply(6, "c6", models["c3"], 1e12),
    ]
    with pytest.raises(FederationHalted) as halted:
        strategy.aggregate_train(1, replies)
    message_text = str(halted.value)
    assert "only 2 clinic(s) trained" in message_text
    assert "c5 (rejected: update rejected: non-finite values" in message_text
    assert "c6 (rejected: update rejected: 'num-examples' must be a number in" in message_text


def test_a_non_finite_aggregate_is_never_saved_or_returned(tmp_path: Path) -> None:
    """Two finite updates near float32's largest value whose median (the mean of the two
    middle values, in float32) overflows: the round halts and saves nothing."""
    sent = {n: np.zeros_like(v) for n, v in sent_model().items()}
    huge = {n: np.full_like(v, 3.0e38) for n, v in sent.items()}
    settings = FederationSettings(
        min_clinics=2,
        hidden_sizes=HIDDEN,
        aggregation="median",
        hostile_clinics=0,
        update_norm_bound=1e300,
        out_dir=tmp_path,
    )
    strategy = strategy_for(settings, sent)
    with pytest.raises(
        FederationHalted,
        match=r"round 1: the aggregated model is unusable \("
        r"non-finite values",
    ):
        strategy.aggregate_train(1, [reply(1, "c1", huge, 10), reply(2, "c2", huge, 10)])
    assert not (tmp_path / "models").exists()


def test_the_report_names_rejected_and_clipped_updates() -> None:
    sent = sent_model()
    models = honest_models(sent, HONEST)
    strategy = strategy_for(SETTINGS, sent)
    far = {n: (v + 10.0).astype(np.float32) for n, v in sent.items()}
    nan = {n: np.full_like(v, np.nan) for n, v in sent.items()}
    replies = [*honest_replies(models), reply(5, "c5", far, 900), reply(6, "c6", nan, 900)]
    aggregate(strategy, replies)
    rounds = [record.summary() for record in strategy.history.rounds]

    report = build_run_report(
        run_id="r", status="completed", message=None, settings=SETTINGS.public_dict(), rounds=rounds
    )

    checks = report["update_checks"]
    assert checks["aggregation"] == "mean" and checks["update_norm_bound"] == 25.0
    assert [(e["round"], e["clinic"]) for e in checks["rejected"]] == [(1, "c6")]
    assert [(e["round"], e["clinic"], e["bound"]) for e in checks["clipped"]] == [(1, "c5", 25.0)]
    rows = {row["clinic"]: row for row in report["clinics"]}
    assert rows["c5"]["clipped"][0]["norm"] == pytest.approx(10.0 * np.sqrt(3649), rel=1e-6)
    assert rows["c6"]["refusals"][0]["status"] == "rejected"
    assert "non-finite" in rows["c6"]["refusals"][0]["reason"]
