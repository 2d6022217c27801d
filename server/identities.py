"""Which clinic a reply speaks for: one reply per clinic per round, one clinic per node.

A reply names its clinic in its own content (``protocol.REPLY_CLINIC``), so nothing but
the coordinator's memory stops a node from speaking for another clinic, or for two. The
rules, checked in every phase of every round before a reply counts:

* a node keeps the identity it first claimed (``clinic_of_node``); a later reply of that
  node naming another clinic is rejected;
* a clinic already held by another node that is taking part in this round cannot be
  claimed; one held by a node that is gone (a SuperNode replaced, a resumed simulation
  whose nodes have new ids) passes to the node that now claims it alone;
* when several nodes claim one clinic in a round and none of them held it before, all
  their replies are rejected: the coordinator cannot tell which is the clinic, and
  counting either would let an impostor in.
"""

from __future__ import annotations

from collections.abc import Collection, MutableMapping, Sequence

from flwr.app import Message

from oralfed.server.history import ClinicResult

__all__ = ["check_identities", "rejected"]


def rejected(result: ClinicResult, reason: str) -> ClinicResult:
    """``result`` as a rejected reply: its reason, and none of the figures it carried."""
    return ClinicResult(result.clinic_id, result.phase, "rejected", reason=reason)


def check_identities(
    replies: Sequence[Message],
    results: Sequence[ClinicResult],
    clinic_of_node: MutableMapping[int, str],
    present: Collection[int],
) -> list[ClinicResult]:
    """``results`` (one per reply, in order) with impostors rejected; ``clinic_of_node``
    learns the identities that passed. ``present``: the nodes taking part in this round."""
    checked = list(results)
    claims: dict[str, list[int]] = {}
    for index, (msg, result) in enumerate(zip(replies, results, strict=True)):
        node = msg.metadata.src_node_id
        if result.status == "rejected" or result.clinic_id == f"node-{node}":
            continue  # no identity claimed (a refusal without a name, an unreadable reply)
        first = clinic_of_node.get(node)
        owner = _owner(clinic_of_node, result.clinic_id)
        if first is not None and first != result.clinic_id:
            checked[index] = rejected(
                result,
                f"node {node} claims clinic {result.clinic_id!r} but first claimed "
                f"{first!r}; a node keeps the identity it first claimed",
            )
        elif owner is not None and owner != node and owner in present:
            checked[index] = rejected(
                result,
                f"node {node} claims clinic {result.clinic_id!r}, which is node {owner}'s",
            )
        else:
            claims.setdefault(result.clinic_id, []).append(index)
    for clinic_id, indices in claims.items():
        nodes = [replies[i].metadata.src_node_id for i in indices]
        if len(indices) > 1:
            for index in indices:
                checked[index] = rejected(
                    checked[index],
                    f"{len(indices)} nodes ({', '.join(map(str, nodes))}) claim clinic "
                    f"{clinic_id!r} in this round; none held it before, so none counts",
                )
            continue
        owner = _owner(clinic_of_node, clinic_id)
        if owner is not None and owner != nodes[0]:
            del clinic_of_node[owner]  # the clinic's node is gone: its identity moves
        clinic_of_node.setdefault(nodes[0], clinic_id)
    return checked


def _owner(clinic_of_node: MutableMapping[int, str], clinic_id: str) -> int | None:
    return next((node for node, held in clinic_of_node.items() if held == clinic_id), None)
