"""Ray Serve's request-router extension point carrying a coserve_jax router policy.

``CoERequestRouter`` (a ``ray.serve.request_router.RequestRouter``, alpha in Ray 2.x) runs in
the process that holds the replicas' deployment handle: the HTTP ingress. For each request it
builds a ``ClusterView`` of the running replicas — each replica's ``routing_stats`` (what its
``record_routing_stats`` reported: held experts, pool bytes, lanes, per-image seconds) and
Ray's count of its ongoing requests — and asks the policy (``policies/router.py``, the same
object class the cluster simulator runs) for a replica. It returns the choice first and the
other replicas, least loaded first, as fallbacks for when the choice rejects the request (full).
A replica Ray reports dead drops out of the view, so the policy re-partitions.

It routes each request to the replica chosen for that request: no FIFOMixin, whose FIFO would
hand the chosen replica to the oldest waiting request, whatever its component type.

A call that names a ``target_replica`` (the ingress's preloads) goes to that replica, past the
policy. The replicas' last stats and, for a partitioning policy, each replica's working set are
published to ``serve/board.py`` for the ingress (its /metrics, /healthz and preloads).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from coserve_jax.coe.graph import CoEGraph, ComponentType
from coserve_jax.policies.router import NoReplicaError
from coserve_jax.serve import board  # a module: reached by reference from the pickled class (board.py)
from coserve_jax.types import ExpertInfo, Role

def graph_to_dict(graph: CoEGraph) -> dict[str, Any]:
    """The graph's metadata as plain data (router kwargs travel through Ray's config)."""
    return {"experts": [[e.expert_id, str(e.role), e.arch, e.param_bytes, list(e.input_shape), e.usage_prob]
                        for e in graph.experts.values()],
            "components": [[c.name, c.classifier, c.detector, c.mix, c.p_damaged, c.p_misaligned, c.p_reversed]
                           for c in graph.components.values()]}


def graph_from_dict(d: Mapping[str, Any]) -> CoEGraph:
    experts = [ExpertInfo(i, Role(r), a, int(b), tuple(s), float(u)) for i, r, a, b, s, u in d["experts"]]
    return CoEGraph(experts, [ComponentType(*c) for c in d["components"]])


class StatsCost:
    """A replica's compute prices as its stats report them (per-image seconds per architecture):
    the ``CostView`` a router reads."""

    def __init__(self, per_image_s: Mapping[str, float]):
        self.per_image_s = dict(per_image_s)

    def batch_latency_s(self, kind: str, arch: str, n: int) -> float:
        return self.per_image_s.get(arch, 1.0) * n

    def max_batch(self, kind: str, arch: str) -> int:
        return 1


class RayReplica:
    """A running Ray Serve replica as a ``ReplicaView``."""

    def __init__(self, replica: RunningReplica, ongoing: int | None):
        s = replica.routing_stats or {}
        self.replica = replica
        self.replica_id = replica.replica_id.unique_id
        self.alive = True
        self.kind = s.get("kind", "cpu")
        self.lanes = int(s.get("lanes", 1))
        self.expert_bytes = int(s.get("expert_bytes", 1 << 62))
        self.cost = StatsCost(s.get("per_image_s", {}))
        self._held = frozenset(s.get("held", ()))
        self.pending = ongoing if ongoing is not None else int(s.get("pending", 0))

    @property
    def num_experts(self) -> int:
        return len(self._held)

    def holds(self, expert_id: str) -> bool:
        return expert_id in self._held


class _View:
    def __init__(self, graph: CoEGraph, replicas: Sequence[RayReplica]):
        self.graph = graph
        self.replicas = replicas


class CoERequestRouter(RequestRouter):
    """Routes by a coserve_jax router policy; kwargs: ``policy`` (_target_ + arguments) and
    ``graph`` (``graph_to_dict``)."""

    def initialize_state(self, policy: Mapping[str, Any] | None = None, graph: Mapping[str, Any] | None = None,
                         **_: Any) -> None:
        from hydra.utils import instantiate

        if policy is None or graph is None:
            raise ValueError("CoERequestRouter: request_router_kwargs needs 'policy' and 'graph'")
        self._policy = instantiate(dict(policy))
        self._graph = graph_from_dict(graph)
        self._lock = threading.Lock()
        self._published: Any = None

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        board.publish_stats({r.replica_id.unique_id: r.routing_stats or {} for r in replicas})
        # A partitioning policy plans as soon as every replica has reported its memory (before
        # the first request), so the ingress can preload each replica's working set.
        if replicas and hasattr(self._policy, "ensure_plan") and all(r.routing_stats for r in replicas):
            with self._lock:
                self._policy.ensure_plan(_View(self._graph, self._view(replicas)))
                self._publish_plans()

    def _view(self, replicas: list[RunningReplica]) -> list[RayReplica]:
        # Sorted by id: every router instance sees the same replica order, so the same partition.
        return sorted((RayReplica(r, self._replica_queue_len_cache.get(r.replica_id)) for r in replicas),
                      key=lambda r: r.replica_id)

    def _publish_plans(self) -> None:
        p = getattr(self._policy, "partition", None)
        if p is not None and p is not self._published:
            board.publish_plans(p.working_set)
            self._published = p

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        reps = self._view(candidate_replicas)
        kwargs = pending_request.kwargs if pending_request is not None else {}
        if "target_replica" in kwargs:  # a preload: to the named replica (None: any)
            target = kwargs["target_replica"]
            named = [r.replica for r in reps if target is None or r.replica_id == target]
            return [named] if named else []  # gone: Ray asks again until the caller's timeout
        ctype = kwargs.get("component_type")
        if ctype is None and pending_request is not None and pending_request.args:
            ctype = pending_request.args[0]
        try:
            with self._lock:
                chosen = self._policy.route(_View(self._graph, reps), str(ctype))
                self._publish_plans()
        except NoReplicaError:
            return []
        first = [r.replica for r in reps if r.replica_id == chosen]
        rest = [r.replica for r in sorted(reps, key=lambda r: (r.pending, r.replica_id)) if r.replica_id != chosen]
        return [first, rest] if first else [rest]
