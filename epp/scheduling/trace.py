"""The decision trace: why a request went where it went.

Built only when asked for (DEBUG/TRACE logging or the opt-in response header), so it costs nothing
otherwise. One `ProfileTrace` per profile run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DecisionTrace", "ProfileTrace"]


@dataclass
class ProfileTrace:
    profile: str
    candidates: tuple[str, ...] = ()
    filters: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    scores: dict[str, tuple[float, dict[str, float]]] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)
    picked: tuple[str, ...] = ()
    failure: str = ""

    def top(self, n: int = 3) -> list[tuple[str, float]]:
        """The n best weighted totals, best first."""
        return sorted(self.totals.items(), key=lambda kv: kv[1], reverse=True)[:n]

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "candidates": list(self.candidates),
            "filters": [{"filter": name, "survivors": list(keys)} for name, keys in self.filters],
            "scorers": {
                name: {"weight": weight, "scores": {k: round(v, 4) for k, v in scores.items()}}
                for name, (weight, scores) in self.scores.items()
            },
            "totals": {k: round(v, 4) for k, v in self.totals.items()},
            "picked": list(self.picked),
            "failure": self.failure,
        }


@dataclass
class DecisionTrace:
    profiles: list[ProfileTrace] = field(default_factory=list)
    primary: str = ""

    def compact(self) -> str:
        """One short line: primary profile, winner, top scores (the x-epp-decision header value)."""
        parts = []
        for p in self.profiles:
            if p.failure:
                parts.append(f"{p.profile}: failed ({p.failure})")
                continue
            top = ",".join(f"{k}={v:.3f}" for k, v in p.top())
            picked = p.picked[0] if p.picked else "-"
            parts.append(f"{p.profile}: candidates={len(p.candidates)} picked={picked} top={top}")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"primary": self.primary, "profiles": [p.as_dict() for p in self.profiles]}
