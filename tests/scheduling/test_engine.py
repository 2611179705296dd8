"""The scheduling engine: filter order and early stop, clamping and weights, contained plugin failures,
the profile-handler loop, timing and decision traces."""

from __future__ import annotations

import math

import pytest

from epp.errors import ErrorCode, SchedulingError
from epp.framework.cycle import CycleState
from epp.framework.types import ProfileRunResult, SchedulingResult
from epp.scheduling.profile import ProfileFailure, SchedulerProfile, WeightedScorer
from epp.scheduling.scheduler import MAX_PROFILE_ROUNDS, Scheduler
from epp.scheduling.trace import DecisionTrace, ProfileTrace

from ._fakes import Fake, FakeHandler, RecordingObserver, ep, req

A, B, C = ep("a"), ep("b"), ep("c")
ALL = [A, B, C]


def profile(filters=(), scorers=(), picker=None, name="default") -> SchedulerProfile:
    return SchedulerProfile(
        name=name,
        filters=tuple(filters),
        scorers=tuple(WeightedScorer(s, w) for s, w in scorers),
        picker=picker or Fake("picker"),
    )


def run(p: SchedulerProfile, candidates=ALL, trace: ProfileTrace | None = None) -> ProfileRunResult:
    return p.run(CycleState(), req(), candidates, RecordingObserver(), trace)


# ---- filters ----------------------------------------------------------------------------------------------


def test_filters_run_in_order_on_the_previous_output() -> None:
    f1, f2 = Fake("f1", keep={"a", "b"}), Fake("f2", keep={"b", "c"})
    picker = Fake("picker")
    assert run(profile([f1, f2], picker=picker)).targets == (B,)
    assert picker.seen == [{"b": 0.0}]


def test_filters_stop_early_when_nothing_is_left() -> None:
    f1, f2 = Fake("f1", keep=set()), Fake("f2")
    scorer, picker = Fake("s"), Fake("picker")
    with pytest.raises(ProfileFailure, match="no endpoints left after filter 'f1'"):
        run(profile([f1, f2], [(scorer, 1.0)], picker))
    assert f2.calls["filter"] == 0 and scorer.calls["score"] == 0 and picker.calls["pick"] == 0


def test_empty_candidates_fail_the_profile() -> None:
    with pytest.raises(ProfileFailure, match="no candidate endpoints"):
        run(profile(), candidates=[])


# ---- scores -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clamped"),
    [(0.5, 0.5), (1.7, 1.0), (-0.3, 0.0), (math.nan, 0.0), (math.inf, 1.0), (-math.inf, 0.0)],
)
def test_each_score_is_clamped_before_weighting(raw: float, clamped: float) -> None:
    picker = Fake("picker")
    run(profile(scorers=[(Fake("s", scores={"a": raw}), 2.0)], picker=picker), candidates=[A])
    assert picker.seen[0]["a"] == pytest.approx(2.0 * clamped)


def test_weighted_totals_are_plain_sums() -> None:
    s1 = Fake("s1", scores={"a": 1.0, "b": 0.5, "c": 0.0})
    s2 = Fake("s2", scores={"a": 0.0, "b": 0.5, "c": 1.0})
    picker = Fake("picker")
    result = run(profile(scorers=[(s1, 2.0), (s2, 3.0)], picker=picker))
    assert picker.seen[0] == pytest.approx({"a": 2.0, "b": 2.5, "c": 3.0})
    assert result.targets == (C,)


def test_missing_and_unknown_keys() -> None:
    scorer = Fake("s", scores={"a": 1.0, "not-a-candidate": 1.0})
    picker = Fake("picker")
    run(profile(scorers=[(scorer, 1.0)], picker=picker))
    assert picker.seen[0] == {"a": 1.0, "b": 0.0, "c": 0.0}


def test_scorers_see_only_filter_survivors() -> None:
    seen = []

    class Spy(Fake):
        def score(self, cycle, request, endpoints):  # type: ignore[no-untyped-def]
            seen.append([e.key for e in endpoints])
            return {}

    run(profile([Fake("f", keep={"c", "a"})], [(Spy("spy"), 1.0)]))
    assert seen == [["a", "c"]]


# ---- failures ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "message"),
    [("filter", "filter 'x' failed"), ("score", "scorer 'x' failed"), ("pick", "picker 'x' failed")],
)
def test_plugin_exceptions_fail_the_profile_not_the_process(where: str, message: str) -> None:
    bad = Fake("x", fail=where)
    p = profile(
        filters=[bad] if where == "filter" else [],
        scorers=[(bad, 1.0)] if where == "score" else [],
        picker=bad if where == "pick" else None,
    )
    with pytest.raises(ProfileFailure, match=message):
        run(p)


def test_a_picker_that_picks_nothing_fails_the_profile() -> None:
    with pytest.raises(ProfileFailure, match="picked no endpoint"):
        run(profile(picker=Fake("p", pick_nothing=True)))


def test_scheduler_turns_plugin_exceptions_into_scheduling_errors() -> None:
    handler = FakeHandler(process=lambda results: _single(results))
    scheduler = Scheduler(handler, {"default": profile(scorers=[(Fake("boom", fail="score"), 1.0)])})
    with pytest.raises(SchedulingError) as err:
        scheduler.schedule(req(), ALL)
    assert err.value.code is ErrorCode.SERVICE_UNAVAILABLE
    assert "failed to run scheduler profile 'default'" in err.value.message
    assert "scorer 'boom' failed" in err.value.message


def _single(results):  # type: ignore[no-untyped-def]
    ((name, result),) = results.items()
    if result is None:
        raise SchedulingError(ErrorCode.SERVICE_UNAVAILABLE, f"failed to run scheduler profile '{name}'")
    return SchedulingResult(name, dict(results))


def test_no_candidates_is_service_unavailable() -> None:
    with pytest.raises(SchedulingError) as err:
        Scheduler(FakeHandler(), {"default": profile()}).schedule(req(), [])
    assert err.value.code is ErrorCode.SERVICE_UNAVAILABLE


def test_handler_exceptions_are_internal_errors() -> None:
    class Broken(FakeHandler):
        def pick_profiles(self, cycle, request, profiles, results):  # type: ignore[no-untyped-def]
            raise RuntimeError("nope")

    with pytest.raises(SchedulingError) as err:
        Scheduler(Broken(), {"default": profile()}).schedule(req(), ALL)
    assert err.value.code is ErrorCode.INTERNAL

    def broken_process(results):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError

    with pytest.raises(SchedulingError, match="profile handler failed"):
        Scheduler(FakeHandler(process=broken_process), {"default": profile()}).schedule(req(), ALL)


# ---- the profile-handler loop -----------------------------------------------------------------------------


def test_handler_loop_runs_rounds_until_no_profile_is_returned() -> None:
    decode_picker, prefill_picker = Fake("dp"), Fake("pp")
    handler = FakeHandler(plan=[["decode"], ["prefill"]])
    scheduler = Scheduler(
        handler,
        {
            "decode": profile(picker=decode_picker, name="decode"),
            "prefill": profile(picker=prefill_picker, name="prefill"),
        },
    )
    outcome = scheduler.schedule(req(), ALL)
    assert handler.rounds == 3
    assert list(outcome.profile_results) == ["decode", "prefill"]
    assert decode_picker.calls["pick"] == prefill_picker.calls["pick"] == 1


def test_failed_profiles_are_recorded_as_none_and_the_loop_continues() -> None:
    seen = {}

    def process(results):  # type: ignore[no-untyped-def]
        seen.update(results)
        return SchedulingResult("ok", dict(results))

    scheduler = Scheduler(
        FakeHandler(plan=[["bad", "ok"]], process=process),
        {"bad": profile([Fake("none", keep=set())], name="bad"), "ok": profile(name="ok")},
    )
    assert scheduler.schedule(req(), ALL).targets == (A,)
    assert seen["bad"] is None and seen["ok"] is not None


def test_unknown_profile_and_runaway_handlers_are_errors() -> None:
    with pytest.raises(SchedulingError, match="unknown profile 'nope'"):
        Scheduler(FakeHandler(plan=[["nope"]]), {"default": profile()}).schedule(req(), ALL)
    runaway = FakeHandler(forever=True)
    with pytest.raises(SchedulingError, match="did not stop"):
        Scheduler(runaway, {"default": profile()}).schedule(req(), ALL)
    assert runaway.rounds == MAX_PROFILE_ROUNDS


def test_empty_outcome_is_an_error() -> None:
    def empty(results):  # type: ignore[no-untyped-def]
        return SchedulingResult("default", {"default": ProfileRunResult(())})

    with pytest.raises(SchedulingError, match="no target"):
        Scheduler(FakeHandler(process=empty), {"default": profile()}).schedule(req(), ALL)


def test_the_cycle_state_is_shared_by_the_plugins_of_one_request() -> None:
    from epp.framework.cycle import StateKey

    key: StateKey[str] = StateKey("k")

    class Writer(Fake):
        def filter(self, cycle, request, endpoints):  # type: ignore[no-untyped-def]
            cycle.write(key, "hello")
            return endpoints

    cycle = CycleState()
    Scheduler(FakeHandler(), {"default": profile([Writer("w")])}).schedule(req(), ALL, cycle)
    assert cycle.read(key) == "hello"


# ---- timing and traces ------------------------------------------------------------------------------------


def test_every_plugin_call_is_timed() -> None:
    observer = RecordingObserver()
    f, s, p = Fake("f"), Fake("s"), Fake("p")
    scheduler = Scheduler(FakeHandler(), {"default": profile([f], [(s, 1.0)], p)}, observer)
    scheduler.schedule(req(), ALL)
    assert observer.plugin_calls == [
        ("ProfilePicker", "h"),
        ("Filter", "f"),
        ("Scorer", "s"),
        ("Picker", "p"),
        ("ProfilePicker", "h"),
        ("ProcessProfilesResults", "h"),
    ]
    assert len(observer.e2e) == 1


def test_failing_calls_are_timed_too() -> None:
    observer = RecordingObserver()
    scheduler = Scheduler(
        FakeHandler(process=_single), {"default": profile([Fake("f", fail="filter")])}, observer
    )
    with pytest.raises(SchedulingError):
        scheduler.schedule(req(), ALL)
    assert ("Filter", "f") in observer.plugin_calls and len(observer.e2e) == 1


def test_decision_trace_records_survivors_scores_totals_and_pick() -> None:
    trace = DecisionTrace()
    scorer = Fake("s", scores={"a": 0.2, "b": 1.5})
    scheduler = Scheduler(
        FakeHandler(), {"default": profile([Fake("f", keep={"a", "b"})], [(scorer, 2.0)], Fake("p", count=2))}
    )
    scheduler.schedule(req(), ALL, trace=trace)
    (pt,) = trace.profiles
    assert trace.primary == "default"
    assert pt.candidates == ("a", "b", "c")
    assert pt.filters == [("f", ("a", "b"))]
    assert pt.scores == {"s": (2.0, {"a": 0.2, "b": 1.5})}  # raw, before clamping
    assert pt.totals == pytest.approx({"a": 0.4, "b": 2.0})  # clamped and weighted
    assert pt.picked == ("b", "a")
    assert "picked=b" in trace.compact()
    assert trace.as_dict()["profiles"][0]["totals"] == {"a": 0.4, "b": 2.0}


def test_trace_records_failures() -> None:
    trace = DecisionTrace()
    scheduler = Scheduler(FakeHandler(process=_single), {"default": profile([Fake("none", keep=set())])})
    with pytest.raises(SchedulingError):
        scheduler.schedule(req(), ALL, trace=trace)
    assert trace.profiles[0].failure == "no endpoints left after filter 'none'"
    assert "failed" in trace.compact()
