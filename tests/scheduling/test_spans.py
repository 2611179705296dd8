"""The scheduler's spans (`epp.scheduling.spans`), recorded by a fake `Span`: one per profile-handler call,
per profile run and per plugin call, with failures marked; an untraced cycle creates none."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from epp.errors import SchedulingError
from epp.framework.types import ProfileRunResult, SchedulingResult
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.spans import AttributeValue, Span
from tests.scheduling._fakes import Fake, FakeHandler, RecordingObserver, ep, req


class RecSpan:
    """A `Span` that keeps its children, attributes, failure and whether it ended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.children: list[RecSpan] = []
        self.attrs: dict[str, AttributeValue] = {}
        self.failure: str | None = None
        self.ended = 0

    def child(self, name: str) -> Span:
        span = RecSpan(name)
        self.children.append(span)
        return span

    def set(self, key: str, value: AttributeValue) -> None:
        assert not self.ended, f"{self.name}: attribute {key} set after end"
        self.attrs[key] = value

    def fail(self, message: str) -> None:
        self.failure = message

    def end(self) -> None:
        self.ended += 1

    def propagation_headers(self) -> Mapping[str, str]:
        return {}

    def tree(self) -> list[Any]:
        return [self.name, [c.tree() for c in self.children]] if self.children else [self.name]

    def all(self) -> list[RecSpan]:
        return [self, *(s for c in self.children for s in c.all())]


EPS = [ep("a", 0), ep("b", 3), ep("c", 1)]


def _scheduler(*profiles: SchedulerProfile, handler: Any = None) -> Scheduler:
    return Scheduler(handler or FakeHandler(), {p.name: p for p in profiles}, RecordingObserver())


def _profile(name: str = "default", **fakes: Fake) -> SchedulerProfile:
    filters = (fakes["filter"],) if "filter" in fakes else ()
    scorer = fakes.get("scorer", Fake("s", scores={"a": 0.2, "b": 0.9, "c": 0.5}))
    return SchedulerProfile(name, filters, (WeightedScorer(scorer, 2.0),), fakes.get("picker", Fake("p")))


def test_a_traced_cycle_has_a_span_per_handler_call_profile_and_plugin() -> None:
    root = RecSpan("epp.scheduling")
    profile = _profile(filter=Fake("f", keep={"a", "b"}))
    result = _scheduler(profile).schedule(req(), EPS, span=root)
    assert result.targets[0].key == "b"
    assert root.tree() == [
        "epp.scheduling",
        [
            ["epp.pick_profiles"],
            ["epp.profile", [["epp.filter.fake"], ["epp.scorer.fake"], ["epp.picker.fake"]]],
            ["epp.pick_profiles"],
            ["epp.process_results"],
        ],
    ]
    assert all(s.ended == 1 for s in root.all()[1:]) and root.ended == 0  # the caller ends its own
    assert root.attrs == {
        "epp.endpoints.candidates": 3,
        "epp.profile.primary": "default",
        "epp.endpoints.picked": ["b"],
    }
    prof = root.children[1]
    assert prof.attrs == {
        "epp.profile.name": "default",
        "epp.endpoints.candidates": 3,
        "epp.endpoints.picked": ["b"],
    }
    flt, scorer, picker = prof.children
    assert flt.attrs == {
        "epp.plugin.type": "fake",
        "epp.plugin.name": "f",
        "epp.endpoints.in": 3,
        "epp.endpoints.out": 2,
    }
    assert scorer.attrs["epp.score.max"] == 0.9 and scorer.attrs["epp.endpoints.scored"] == 3
    assert picker.attrs["epp.endpoints.picked"] == ["b"]
    assert root.children[0].attrs["epp.profiles.picked"] == ["default"]


def test_traced_and_untraced_cycles_decide_alike_and_plugins_see_the_same() -> None:
    scorer = Fake("s", scores={"a": 0.2, "b": 0.9, "c": 0.5})
    picker = Fake("p")
    handler = FakeHandler(plan=[["default"], [], ["default"]])  # two cycles
    scheduler = _scheduler(_profile(scorer=scorer, picker=picker), handler=handler)
    untraced = scheduler.schedule(req(), EPS)
    traced = scheduler.schedule(req(), EPS, span=RecSpan("s"))
    assert untraced.targets == traced.targets
    assert picker.seen[0] == picker.seen[1]
    # metrics name the real plugins, not their traced wrappers
    assert ("Scorer", "s") in scheduler.observer.plugin_calls  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fakes", "failed", "message"),
    [
        ({"filter": Fake("f", fail="filter")}, "epp.filter.fake", "RuntimeError('filter exploded')"),
        ({"scorer": Fake("s", fail="score")}, "epp.scorer.fake", "ValueError('scorer exploded')"),
        ({"picker": Fake("p", fail="pick")}, "epp.picker.fake", "KeyError('picker exploded')"),
    ],
)
def test_a_failing_plugin_fails_its_span_and_its_profile(
    fakes: dict[str, Fake], failed: str, message: str
) -> None:
    root = RecSpan("epp.scheduling")
    with pytest.raises(SchedulingError):
        _scheduler(_profile(**fakes), handler=FakeHandler(process=_no_result)).schedule(req(), EPS, span=root)
    prof = next(s for s in root.children if s.name == "epp.profile")
    assert prof.failure is not None and prof.ended == 1
    (plugin,) = [s for s in prof.children if s.name == failed]
    assert plugin.failure == message and plugin.ended == 1
    process_span = root.children[-1]
    assert process_span.name == "epp.process_results" and process_span.failure == "no profile succeeded"


def _no_result(results: Mapping[str, ProfileRunResult | None]) -> SchedulingResult:
    from epp.errors import ErrorCode

    assert all(r is None for r in results.values())
    raise SchedulingError(ErrorCode.SERVICE_UNAVAILABLE, "no profile succeeded")


def test_a_filter_that_leaves_nothing_fails_the_profile_span() -> None:
    root = RecSpan("epp.scheduling")
    with pytest.raises(SchedulingError):
        _scheduler(_profile(filter=Fake("f", keep=set())), handler=FakeHandler(process=_no_result)).schedule(
            req(), EPS, span=root
        )
    prof = root.children[1]
    assert prof.failure == "no endpoints left after filter 'f'"
    (flt,) = prof.children  # nothing scored or picked after the filter emptied the list
    assert flt.failure is None and flt.attrs["epp.endpoints.out"] == 0
