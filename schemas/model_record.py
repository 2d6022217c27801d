"""The risk model on the wire: all its parameters as one flat array in one ``ArrayRecord``.

Flower stores every array of a message as objects of their own (an ``Array`` and its
``ArrayChunk``), and every object is one request for each hop it makes: the ServerApp's
upload, the SuperNode's download, the clinic task's pull from its SuperNode, and the same
three back. The risk model's six tensors made a message of 16 objects, a reply of 17; one
flat vector makes them 6 and 7. Deployed rounds wait on those requests (each a TLS and, for
the SuperNodes, a signed call on 2 shared cores), and a message whose objects are still being
uploaded when it is pulled costs its reader a retry (bench/deploy_overhead.py).

The order and shapes are the model's ``state_dict``, which the clinics and the coordinator
rebuild from the federation's public ``hidden-sizes``: the vector says nothing more than the
named arrays did, and a vector of any other length or type is refused before anything reads it.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

__all__ = ["PARAMETERS", "load_model_record", "model_record"]

PARAMETERS = "parameters"  # the record's one array: every parameter, in state_dict order

Model = TypeVar("Model", bound=nn.Module)


def model_record(model: nn.Module) -> ArrayRecord:
    """``model``'s parameters as one flat float32 array."""
    flat = torch.cat([tensor.detach().reshape(-1) for tensor in model.state_dict().values()])
    return ArrayRecord({PARAMETERS: Array(flat.numpy().astype(np.float32, copy=False))})


def load_model_record(model: Model, record: ArrayRecord) -> Model:
    """``model`` holding the parameters of ``record``; raises :class:`ValueError` naming the
    mismatch when the record is not exactly this architecture's flat parameter vector."""
    if set(record) != {PARAMETERS}:
        raise ValueError(f"expected one array {PARAMETERS!r}, got {sorted(record)}")
    try:
        flat = record[PARAMETERS].numpy()
    except (TypeError, ValueError, OSError, EOFError) as error:  # untrusted bytes
        raise ValueError(f"the array {PARAMETERS!r} cannot be read: {error}") from None
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    size = sum(shape.numel() for shape in shapes.values())
    if flat.dtype != np.float32 or flat.shape != (size,):
        raise ValueError(
            f"{PARAMETERS!r} is {flat.dtype}{list(flat.shape)}; this model's parameters are "
            f"float32[{size}]"
        )
    values, start = {}, 0
    for name, shape in shapes.items():
        values[name] = torch.from_numpy(flat[start : start + shape.numel()].copy()).reshape(shape)
        start += shape.numel()
    model.load_state_dict(values)
    return model
