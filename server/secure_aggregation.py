"""The coordinator's side of secure aggregation: Flower's SecAgg+ stages on the Message API.

Flower 1.42 drives SecAgg+ (Bell et al. 2020) only from its legacy stack
(``SecAggPlusWorkflow``: a ``LegacyContext``, a legacy strategy fed each client's
``FitRes``). This module drives the same four stages, with the same messages, for the
clinics' unchanged Flower ``secaggplus_mod`` (``oralfed.client.secure_aggregation``) and
with Flower's own primitives for everything cryptographic: Shamir's secret sharing
(``combine_shares``), the key agreement (``generate_shared_key``), the masks' generator
(``pseudo_rand_gen``) and the quantiser. Why not Flower's workflow is in docs/privacy.md.

A round, per stage one ``send_and_receive`` on the grid:

1. setup: the protocol's parameters to every sampled clinic; each answers two public keys.
2. share keys: every clinic's keys to every other; each answers its Shamir shares,
   encrypted for their recipients.
3. collect masked vectors: the training request with the shares forwarded; each clinic
   trains (charging its ledger first) and answers its masked, weighted update with its
   identity and DP metrics, never the update or its weight.
4. unmask: each clinic that answered stage 3 is told who did and who dropped out; the
   shares it returns remove the masks, so only the weighted mean of the updates appears.

Every clinic shares with every other in the round (``shares`` = the round's clinics), and
any ``threshold`` of them reconstruct a secret: a clinic that drops out after sharing its
keys is tolerated while at least ``threshold`` remain; below that the round fails and the
sum is never formed. What the coordinator holds at any time is keys, ciphertexts, masked
vectors (uniformly random to it) and, at the end, the mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from oralfed.schemas import protocol
from oralfed.schemas.settings import FederationSettings
from oralfed.server.wrapped_grid import WrappedGrid

__all__ = [
    "MODULUS_RANGE",
    "SecAggParameters",
    "SecureAggregationGrid",
    "SecureRound",
    "run_secure_round",
]

MODULUS_RANGE = 2**32  # Flower's largest modulus (its masks are drawn below it)
QUANTIZED_BITS = 31  # Flower's quantiser rounds into int32
Arrays = list[np.ndarray]


@dataclass(frozen=True)
class SecAggParameters:
    """One round's protocol parameters, all public (the report shows them)."""

    clinics: int
    shares: int
    threshold: int
    clipping_range: float  # = the update norm bound: no coordinate of a bounded update exceeds it
    quantization_range: int
    modulus_range: int
    max_weight: float

    @classmethod
    def for_round(
        cls, clinics: int, threshold_fraction: float, norm_bound: float, max_weight: float
    ) -> SecAggParameters:
        """Every clinic shares with every other; a secret needs ``threshold_fraction`` of the
        shares (at least 2). The quantisation range is the largest power of two for which
        the sum of ``clinics`` quantised values stays below the modulus, so the sum never
        wraps and the rounding is as fine as the modulus allows."""
        if clinics < 2:
            raise ValueError("secure aggregation needs at least 2 clinics in a round")
        threshold = min(clinics, max(2, math.ceil(threshold_fraction * clinics)))
        bits = min(
            QUANTIZED_BITS - 1, int(math.log2(MODULUS_RANGE)) - math.ceil(math.log2(clinics)) - 1
        )
        return cls(clinics, clinics, threshold, norm_bound, 2**bits, MODULUS_RANGE, max_weight)

    def setup_config(self) -> dict[str, Any]:
        """What Flower's mod reads in its setup stage."""
        return {
            Key.STAGE: Stage.SETUP,
            Key.SAMPLE_NUMBER: self.clinics,
            Key.SHARE_NUMBER: self.shares,
            Key.THRESHOLD: self.threshold,
            Key.CLIPPING_RANGE: float(self.clipping_range),
            Key.TARGET_RANGE: self.quantization_range,
            Key.MOD_RANGE: self.modulus_range,
            Key.MAX_WEIGHT: float(self.max_weight),
        }

    def public_dict(self) -> dict[str, Any]:
        return {
            "protocol": "SecAgg+ (Flower 1.42 primitives)",
            "clinics": self.clinics,
            "shares": self.shares,
            "reconstruction_threshold": self.threshold,
            "clipping_range": self.clipping_range,
            "quantization_range": self.quantization_range,
            "modulus_range": self.modulus_range,
            "max_weight": self.max_weight,
        }


@dataclass
class SecureRound:
    """What a round under secure aggregation gives the strategy."""

    parameters: SecAggParameters
    replies: list[Message] = field(default_factory=list)  # stage 3's: identity and metrics only
    mean_update: Arrays | None = None  # the weighted mean of the updates, in the sent order
    dropped: list[int] = field(default_factory=list)  # nodes that shared keys, sent no vector
    clinics: dict[int, str] = field(default_factory=dict)  # the names the stages' answers gave
    problem: str | None = None  # why there is no mean (the round fails)


Send = Callable[[list[Message]], Iterable[Message]]


def run_secure_round(
    send: Send,
    requests: Sequence[Message],
    parameters: SecAggParameters,
    shapes: list[tuple[int, ...]],
    group: str = "",
) -> SecureRound:
    """Run the four stages for the training ``requests`` (one per clinic node, as Flower's
    strategy made them); ``shapes`` are the model's arrays', in the order of the request's
    array record; ``send`` is the grid's ``send_and_receive`` with the round's timeout;
    ``group`` the stage messages' group id (the round)."""
    result = SecureRound(parameters)
    request_of = {msg.metadata.dst_node_id: msg for msg in requests}
    errors: dict[int, Message] = {}

    def stage(
        configs: dict[int, dict[str, Any]], content: Callable[[int], RecordDict] | None = None
    ) -> dict[int, Message]:
        messages = []
        for node, config in configs.items():
            body = content(node) if content is not None else RecordDict()
            body[RECORD_KEY_CONFIGS] = ConfigRecord(config)
            messages.append(
                Message(body, dst_node_id=node, message_type=MessageType.TRAIN, group_id=group)
            )
        replies = {reply.metadata.src_node_id: reply for reply in send(messages)}
        for node, reply in replies.items():
            if reply.has_error():  # the first error a clinic sent is what the record shows
                errors.setdefault(node, reply)
            elif isinstance(name := _clinic_named(reply), str):
                result.clinics.setdefault(node, name)
        return replies

    # 1. setup
    replies = stage({node: parameters.setup_config() for node in request_of})
    public_keys = {
        node: keys for node, reply in replies.items() if (keys := _public_keys(reply)) is not None
    }
    if (problem := _too_few(parameters, public_keys, "setup")) is not None:
        return _failed(result, problem, errors)

    # 2. share keys
    everyone = {str(node): list(keys) for node, keys in public_keys.items()}
    replies = stage({node: {**everyone, Key.STAGE: Stage.SHARE_KEYS} for node in public_keys})
    encrypted = {
        node: _pairs(reply, Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST)
        for node, reply in replies.items()
    }
    # A clinic counts as sharing only with a share for every other: the others then all
    # hold its shares and mask with it, so its masks can be removed whatever happens next.
    sharers = {
        node
        for node, pairs in encrypted.items()
        if {destination for destination, _ in pairs} == set(public_keys) - {node}
    }
    forwarded: dict[int, list[tuple[int, bytes]]] = {node: [] for node in sharers}
    for source in sharers:
        for destination, ciphertext in encrypted[source]:
            if destination in sharers:
                forwarded[destination].append((source, ciphertext))
    if (problem := _too_few(parameters, sharers, "key sharing")) is not None:
        return _failed(result, problem, errors)

    # 3. collect masked vectors: the clinics train here
    def training(node: int) -> RecordDict:
        return _copy(request_of[node].content)

    replies = stage(
        {
            node: {
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                Key.CIPHERTEXT_LIST: [ciphertext for _, ciphertext in forwarded[node]],
                Key.SOURCE_LIST: [source for source, _ in forwarded[node]],
            }
            for node in sharers
        },
        training,
    )
    expected = [(1,), *shapes]
    masked: dict[int, Arrays] = {}
    for node, reply in replies.items():
        vector = _masked_vector(reply, expected)
        if vector is not None:
            masked[node] = vector
        if not reply.has_error():
            reply.content = _without_protocol(reply)
        errors.pop(node, None)
        result.replies.append(reply)
    result.replies += errors.values()  # clinics that failed before training
    errors.clear()
    result.dropped = sorted(sharers - set(masked))
    if (problem := _too_few(parameters, masked, "masked-vector collection")) is not None:
        return _failed(result, problem)

    # 4. unmask
    active, dropped = sorted(masked), result.dropped
    replies = stage(
        {
            node: {
                Key.STAGE: Stage.UNMASK,
                Key.ACTIVE_NODE_ID_LIST: active,
                Key.DEAD_NODE_ID_LIST: dropped,
            }
            for node in active
        }
    )
    shares: dict[int, list[bytes]] = {node: [] for node in sharers}
    for reply in replies.values():
        for owner, share in _pairs(reply, Key.NODE_ID_LIST, Key.SHARE_LIST):
            if owner in shares:
                shares[owner].append(share)
    short = [node for node in [*active, *dropped] if len(shares[node]) < parameters.threshold]
    if short:
        return _failed(
            result,
            f"unmasking: {len(short)} clinic(s)' secrets have fewer than the "
            f"{parameters.threshold} shares needed (too few clinics answered the unmask stage)",
        )
    try:
        result.mean_update = _unmask(parameters, masked, shares, public_keys, active, dropped)
    except (ValueError, TypeError, IndexError, AssertionError) as error:  # a share unusable
        return _failed(result, f"unmasking: a secret could not be reconstructed ({error})")
    if result.mean_update is None:
        return _failed(result, "unmasking: the sum of the clinics' weights came out as zero")
    return result


class SecureAggregationGrid(WrappedGrid):
    """``grid``, with every training round run under SecAgg+ (:func:`run_secure_round`).

    Flower's strategy sends a round's training messages and aggregates the replies; here
    those messages become the protocol's four stages, the replies it gets are the clinics'
    identities and DP metrics only, and the round's mean update waits in :attr:`rounds`
    for the strategy (``oralfed.server.strategy``). Evaluation and queries pass unchanged.
    """

    def __init__(self, grid: Grid, settings: FederationSettings) -> None:
        super().__init__(grid)
        self.settings = settings
        self.rounds: dict[int, SecureRound] = {}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        requests = list(messages)
        if not requests or any(m.metadata.message_type != MessageType.TRAIN for m in requests):
            return self.grid.send_and_receive(requests, timeout=timeout)
        sent = requests[0].content.array_records[protocol.REPLY_ARRAYS]
        # Flower's strategies put the round in the request's config (their messages carry
        # no group id); the stages carry it as their group id.
        config = next(iter(requests[0].content.config_records.values()))
        server_round = int(cast(int, config[protocol.CFG_ROUND]))
        parameters = SecAggParameters.for_round(
            len(requests),
            self.settings.secagg_threshold,
            self.settings.update_norm_bound,
            self.settings.secagg_max_weight,
        )
        result = run_secure_round(
            lambda stage: self.grid.send_and_receive(stage, timeout=timeout),
            requests,
            parameters,
            [tuple(array.shape) for array in sent.values()],
            group=str(server_round),
        )
        self.rounds[server_round] = result
        return result.replies


def _unmask(
    parameters: SecAggParameters,
    masked: dict[int, Arrays],
    shares: dict[int, list[bytes]],
    public_keys: dict[int, tuple[bytes, bytes]],
    active: list[int],
    dropped: list[int],
) -> Arrays | None:
    """The weighted mean of the active clinics' updates: their masked vectors summed, each
    one's own mask (from its reconstructed seed) and each dropped clinic's pairwise masks
    with the active ones (from its reconstructed key) removed, then dequantised."""
    modulus = parameters.modulus_range
    total: Arrays = [np.zeros(a.shape, dtype=np.int64) for a in next(iter(masked.values()))]
    for vector in masked.values():
        total = parameters_addition(total, vector)
    shapes = [a.shape for a in total]
    for node in active:
        seed = combine_shares(shares[node])
        total = parameters_subtraction(total, pseudo_rand_gen(seed, modulus, shapes))
    for node in dropped:
        secret_key = bytes_to_private_key(combine_shares(shares[node]))
        for other in active:
            shared = generate_shared_key(secret_key, bytes_to_public_key(public_keys[other][0]))
            mask = pseudo_rand_gen(shared, modulus, shapes)
            # the active clinic added the mask if its id is the larger one, else subtracted it
            total = (parameters_subtraction if other > node else parameters_addition)(total, mask)
    weight_sum, quantized = factor_extract(parameters_mod(total, modulus))
    if weight_sum <= 0:
        return None
    values = dequantize(quantized, parameters.clipping_range, parameters.quantization_range)
    offset = -(len(active) - 1) * parameters.clipping_range
    return [(value + offset) * (parameters.quantization_range / weight_sum) for value in values]


def _too_few(parameters: SecAggParameters, nodes: Iterable[int], what: str) -> str | None:
    count = len(list(nodes))
    if count >= parameters.threshold:
        return None
    return (
        f"secure aggregation: only {count} clinic(s) took part in {what}, fewer than the "
        f"reconstruction threshold of {parameters.threshold}; the round's sum was never formed"
    )


def _failed(
    result: SecureRound, problem: str, errors: dict[int, Message] | None = None
) -> SecureRound:
    """The round without a mean; ``errors``: the clinics' error replies so far, for the
    record (after the collect stage they are in ``result.replies`` already)."""
    result.problem, result.mean_update = problem, None
    result.replies += (errors or {}).values()
    return result


def _clinic_named(reply: Message) -> object:
    identity = reply.content.config_records.get(protocol.REPLY_CLINIC)
    return None if identity is None else identity.get(protocol.CLINIC_ID)


def _configs(reply: Message) -> ConfigRecord | None:
    if reply.has_error():
        return None
    return reply.content.config_records.get(RECORD_KEY_CONFIGS)


def _public_keys(reply: Message) -> tuple[bytes, bytes] | None:
    configs = _configs(reply)
    if configs is None:
        return None
    pk1, pk2 = configs.get(Key.PUBLIC_KEY_1), configs.get(Key.PUBLIC_KEY_2)
    if isinstance(pk1, bytes) and isinstance(pk2, bytes):
        return pk1, pk2
    return None


def _pairs(reply: Message, ids: str, values: str) -> list[tuple[int, bytes]]:
    """(node id, bytes) pairs of an answer's two parallel lists: the share-keys stage's
    destinations and ciphertexts, the unmask stage's owners and shares. A malformed answer
    gives none: a sender without its encrypted shares holds none of the others' and is
    not counted as sharing; shares that do not parse count for nothing."""
    configs = _configs(reply)
    if configs is None:
        return []
    nodes, blobs = configs.get(ids), configs.get(values)
    if not (isinstance(nodes, list) and isinstance(blobs, list)) or len(nodes) != len(blobs):
        return []
    return [
        (node, blob)
        for node, blob in zip(nodes, blobs, strict=True)
        if isinstance(node, int) and isinstance(blob, bytes)
    ]


def _masked_vector(reply: Message, shapes: list[tuple[int, ...]]) -> Arrays | None:
    """A collect-stage answer's masked vector, if it has the expected shapes and integer
    values below the modulus; otherwise the clinic counts as dropped out."""
    configs = _configs(reply)
    if configs is None:
        return None
    raw = configs.get(Key.MASKED_PARAMETERS)
    if not isinstance(raw, list) or len(raw) != len(shapes):
        return None
    try:
        arrays = [bytes_to_ndarray(cast(bytes, item)) for item in raw]
    except Exception:  # not a serialised array at all
        return None
    if [a.shape for a in arrays] != shapes or not all(
        np.issubdtype(a.dtype, np.integer) for a in arrays
    ):
        return None
    if any(a.size and (a.min() < 0 or a.max() >= MODULUS_RANGE) for a in arrays):
        return None
    return [a.astype(np.int64) for a in arrays]


def _copy(content: RecordDict) -> RecordDict:
    """A request's records for one stage message (the protocol's record is added per node)."""
    return RecordDict({name: record for name, record in content.items()})


def _without_protocol(reply: Message) -> RecordDict:
    """A collect-stage answer as the strategy sees it: the clinic's identity and metrics."""
    return RecordDict(
        {name: record for name, record in reply.content.items() if name != RECORD_KEY_CONFIGS}
    )
