"""The PCB inspection CoE as a graph of experts with routing rules.

Every component type has a classification expert (preliminary). Some types also have a
detection expert (subsequent), shared among several types, that runs when the classifier finds
no damage. Routing is decided either by the experts' real outputs (a trained zoo) or by the
request's ground-truth route (trace-driven: simulator and untrained paper-scale zoos).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from coserve_jax.types import CLASSIFY_VERDICTS, DETECT_VERDICTS, ExpertInfo, Outcome, Request, Role


class UnknownComponentError(KeyError):
    """A request names a component type the CoE does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class ComponentType:
    """One component type on the boards.

    mix: share of all component images that are of this type (sums to 1 over types).
    p_damaged: probability that the classifier routes the image to "damaged" (ends the request).
    p_misaligned, p_reversed: ground-truth rates of the detection expert's defects.
    """

    name: str
    classifier: str
    detector: str | None
    mix: float
    p_damaged: float
    p_misaligned: float = 0.0  # only types with a detector
    p_reversed: float = 0.0


class CoEGraph:
    """Experts, component types and the routing rules between them."""

    def __init__(self, experts: Sequence[ExpertInfo], components: Sequence[ComponentType]):
        self.experts: dict[str, ExpertInfo] = {e.expert_id: e for e in experts}
        if len(self.experts) != len(experts):
            raise ValueError("CoEGraph: duplicate expert ids in experts")
        self.components: dict[str, ComponentType] = {c.name: c for c in components}
        for c in components:
            for field, eid in (("classifier", c.classifier), ("detector", c.detector)):
                if eid is not None and eid not in self.experts:
                    raise ValueError(f"component type {c.name!r}: {field} {eid!r} is not an expert")
        total = sum(c.mix for c in components)
        if not np.isclose(total, 1.0, atol=1e-6):
            raise ValueError(f"component mix must sum to 1, got {total:.6f}")
        self._usage = self._usage_probs()

    # ---- structure -------------------------------------------------------------------------
    def component(self, name: str) -> ComponentType:
        try:
            return self.components[name]
        except KeyError:
            raise UnknownComponentError(
                f"unknown component type {name!r}; the CoE knows {len(self.components)} types "
                f"(e.g. {', '.join(list(self.components)[:3])})"
            ) from None

    def preliminary(self, component_type: str) -> str:
        return self.component(component_type).classifier

    def preliminaries_of(self, expert_id: str) -> tuple[str, ...]:
        """Classification experts whose requests may continue to this detection expert."""
        return tuple(c.classifier for c in self.components.values() if c.detector == expert_id)

    def is_subsequent(self, expert_id: str) -> bool:
        return self.experts[expert_id].role == Role.SUBSEQUENT

    @property
    def total_bytes(self) -> int:
        return sum(e.param_bytes for e in self.experts.values())

    # ---- usage probabilities (offline, from the rules and the component mix) ----------------
    def _usage_probs(self) -> dict[str, float]:
        p = {eid: 0.0 for eid in self.experts}
        for c in self.components.values():
            p[c.classifier] += c.mix
            if c.detector is not None:
                p[c.detector] += c.mix * (1.0 - c.p_damaged)
        return p

    def usage_probs(self) -> Mapping[str, float]:
        """Probability that one request uses each expert (may sum to > 1 over experts)."""
        return self._usage

    def usage_cdf(self) -> np.ndarray:
        """Cumulative share of usage over experts sorted by descending probability."""
        p = np.sort(np.fromiter(self._usage.values(), dtype=np.float64))[::-1]
        return np.cumsum(p) / p.sum()

    # ---- routing -----------------------------------------------------------------------------
    def truth_route(self, component_type: str, verdict: str) -> tuple[str, ...]:
        """Expert path a request with this ground-truth verdict takes."""
        c = self.component(component_type)
        if verdict == "damaged" or c.detector is None:
            return (c.classifier,)
        return (c.classifier, c.detector)

    def route_from_output(self, request: Request, expert_id: str, logits: np.ndarray) -> Outcome:
        """Apply the routing rules to an expert's output logits for one request."""
        return self.route_from_label(request, expert_id, int(np.argmax(logits)))

    def route_from_label(self, request: Request, expert_id: str, label: int) -> Outcome:
        """The routing rules, given the argmax of an expert's output for one request."""
        c = self.component(request.component_type)
        if expert_id == c.classifier:
            verdict = CLASSIFY_VERDICTS[label]
            if verdict == "ok" and c.detector is not None:
                return Outcome(next_expert=c.detector)
            return Outcome(next_expert=None, verdict=verdict)
        if expert_id == c.detector:
            return Outcome(next_expert=None, verdict=DETECT_VERDICTS[label])
        raise ValueError(f"expert {expert_id!r} is not on the path of type {c.name!r}")

    def route_from_trace(self, request: Request, expert_id: str) -> Outcome:
        """Follow the request's recorded route (trace-driven routing)."""
        route = request.route or self.truth_route(request.component_type, request.truth or "ok")
        try:
            i = route.index(expert_id)
        except ValueError:
            raise ValueError(f"expert {expert_id!r} is not on request {request.request_id}'s route") from None
        if i + 1 < len(route):
            return Outcome(next_expert=route[i + 1])
        return Outcome(next_expert=None, verdict=request.truth or "ok")
