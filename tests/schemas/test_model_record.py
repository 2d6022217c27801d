"""The model on the wire: one flat vector that reads back exactly, refused in any other shape,
and a message of a handful of Flower objects however many layers the model has."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import given, settings
from hypothesis import strategies as st

from oralfed.schemas import protocol
from oralfed.schemas.model import build_model
from oralfed.schemas.model_record import PARAMETERS, load_model_record, model_record

HIDDEN = (64, 32)


@settings(max_examples=25, deadline=None)
@given(
    hidden=st.lists(st.integers(1, 40), min_size=0, max_size=4).map(tuple),
    seed=st.integers(0, 2**31 - 1),
)
def test_a_model_reads_back_exactly(hidden: tuple[int, ...], seed: int) -> None:
    sent = build_model(hidden, seed=seed)
    record = model_record(sent)
    assert list(record) == [PARAMETERS]
    assert record[PARAMETERS].numpy().dtype == np.float32
    got = load_model_record(build_model(hidden), record)
    for (name, want), (got_name, value) in zip(
        sent.state_dict().items(), got.state_dict().items(), strict=True
    ):
        assert name == got_name and torch.equal(want, value)


def _record(value: object) -> ArrayRecord:
    return ArrayRecord({PARAMETERS: Array(np.asarray(value))})


SIZE = model_record(build_model(HIDDEN))[PARAMETERS].numpy().size

REFUSED = {
    "another architecture's vector": (
        model_record(build_model((8,))),
        f"float32[{SIZE}]",
    ),
    "one value more": (_record(np.zeros(SIZE + 1, np.float32)), f"[{SIZE + 1}]"),
    "a matrix of the right size": (_record(np.zeros((1, SIZE), np.float32)), f"[1, {SIZE}]"),
    "float64": (_record(np.zeros(SIZE)), "float64"),
    "named arrays": (ArrayRecord(build_model(HIDDEN).state_dict()), "layers.0.weight"),
    "an extra array": (
        ArrayRecord(
            {
                PARAMETERS: Array(np.zeros(SIZE, np.float32)),
                "backdoor": Array(np.ones(2, np.float32)),
            }
        ),
        "backdoor",
    ),
    "no array": (ArrayRecord(), "got []"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_record_that_is_not_this_models_vector_is_refused_by_what_differs(case: str) -> None:
    record, words = REFUSED[case]
    model = build_model(HIDDEN, seed=1)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ValueError) as refused:
        load_model_record(model, record)
    assert words in str(refused.value)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())  # unchanged


def test_unreadable_bytes_are_refused_not_raised_through() -> None:
    array = Array(np.zeros(SIZE, np.float32))
    array.data = b"not a numpy file"
    with pytest.raises(ValueError, match="cannot be read"):
        load_model_record(build_model(HIDDEN), ArrayRecord({PARAMETERS: array}))


def test_a_train_message_is_a_handful_of_objects_whatever_the_depth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each Flower object is one request per hop of a deployed round: the message holds the
    model as one array (an ``Array`` and one ``ArrayChunk``), not two objects per tensor."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    for hidden in [(), (64, 32), (16, 16, 16, 16)]:
        content = RecordDict(
            {
                protocol.REPLY_ARRAYS: model_record(build_model(hidden)),
                "config": ConfigRecord({protocol.CFG_ROUND: 1}),
            }
        )
        message = Message(content, dst_node_id=1, message_type="train")
        kinds = sorted(type(o).__name__ for o in get_all_nested_objects(message).values())
        assert kinds == [
            "Array",
            "ArrayChunk",
            "ArrayRecord",
            "ConfigRecord",
            "Message",
            "RecordDict",
        ]
