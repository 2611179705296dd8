"""The scheduling cycle: the profile handler picks profiles in a loop, then chooses the primary result.

Upstream semantics: profiles returned by `pick_profiles` run in order; a failed profile is stored as None
and the loop continues; `process_results` decides whether the request fails. Every failure reaches the
caller as a `SchedulingError` whose message says which profile failed and why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from epp.errors import ErrorCode, SchedulingError
from epp.framework.cycle import CycleState
from epp.framework.plugins import ProfileHandler
from epp.framework.types import Endpoint, InferenceRequest, ProfileRunResult, SchedulingResult
from epp.scheduling.observer import NullObserver, SchedulerObserver
from epp.scheduling.profile import ProfileFailure, SchedulerProfile
from epp.scheduling.spans import (
    ATTR_CANDIDATES,
    ATTR_PICKED,
    ATTR_PROFILE,
    PROFILE,
    Span,
    TracedProfileHandler,
)
from epp.scheduling.trace import DecisionTrace, ProfileTrace

__all__ = ["MAX_PROFILE_ROUNDS", "Scheduler"]

log = logging.getLogger(__name__)

_perf = time.perf_counter

#: A guard against a profile handler that never stops asking for profiles.
MAX_PROFILE_ROUNDS = 16


class Scheduler:
    def __init__(
        self,
        profile_handler: ProfileHandler,
        profiles: Mapping[str, SchedulerProfile],
        observer: SchedulerObserver | None = None,
    ) -> None:
        self.profile_handler = profile_handler
        self.profiles = dict(profiles)
        self.profile_names = tuple(self.profiles)
        self.observer: SchedulerObserver = observer or NullObserver()

    def schedule(
        self,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        cycle: CycleState | None = None,
        trace: DecisionTrace | None = None,
        span: Span | None = None,
    ) -> SchedulingResult:
        """Pick targets for `request` among `candidates`; raises SchedulingError when none can be chosen.

        `span` (a traced request): the span of this scheduling cycle, which the caller starts and ends;
        each profile-handler call and each profile run (with its plugin calls) becomes a child of it.
        """
        start = _perf()
        try:
            return self._schedule(request, candidates, cycle or CycleState(), trace, span)
        finally:
            self.observer.scheduler_duration(_perf() - start)

    def _schedule(
        self,
        request: InferenceRequest,
        candidates: Sequence[Endpoint],
        cycle: CycleState,
        trace: DecisionTrace | None,
        span: Span | None,
    ) -> SchedulingResult:
        if not candidates:
            raise SchedulingError(ErrorCode.SERVICE_UNAVAILABLE, "no candidate endpoints for the request")
        handler: ProfileHandler = self.profile_handler
        if span is not None:
            span.set(ATTR_CANDIDATES, len(candidates))
            handler = TracedProfileHandler(handler, span)
        observer = self.observer
        results: dict[str, ProfileRunResult | None] = {}
        failures: dict[str, str] = {}
        for _ in range(MAX_PROFILE_ROUNDS):
            t0 = _perf()
            try:
                names = handler.pick_profiles(cycle, request, self.profile_names, results)
            except Exception as exc:
                log.exception("profile handler %s failed in pick_profiles", handler.typed_name)
                raise SchedulingError(ErrorCode.INTERNAL, f"profile handler failed: {exc!r}") from exc
            finally:
                observer.plugin_duration("ProfilePicker", handler.typed_name, _perf() - t0)
            if not names:
                break
            for name in names:
                profile = self.profiles.get(name)
                if profile is None:
                    raise SchedulingError(
                        ErrorCode.INTERNAL, f"profile handler chose unknown profile '{name}'"
                    )
                if trace is None and span is None:
                    try:
                        results[name] = profile.run(cycle, request, candidates, observer)
                    except ProfileFailure as failure:
                        results[name] = None
                        failures[name] = str(failure)
                else:
                    _run_recorded(
                        name, profile, cycle, request, candidates, observer, trace, span, results, failures
                    )
        else:
            raise SchedulingError(ErrorCode.INTERNAL, "profile handler did not stop picking profiles")

        if not results:
            raise SchedulingError(ErrorCode.INTERNAL, "failed to run any scheduler profile")
        t0 = _perf()
        try:
            outcome = handler.process_results(cycle, request, results)
        except SchedulingError as exc:
            why = "; ".join(f"profile '{n}': {r}" for n, r in failures.items())
            raise SchedulingError(exc.code, f"{exc.message}{': ' + why if why else ''}") from exc
        except Exception as exc:
            log.exception("profile handler %s failed in process_results", handler.typed_name)
            raise SchedulingError(ErrorCode.INTERNAL, f"profile handler failed: {exc!r}") from exc
        finally:
            observer.plugin_duration("ProcessProfilesResults", handler.typed_name, _perf() - t0)
        if not outcome.targets:
            raise SchedulingError(ErrorCode.SERVICE_UNAVAILABLE, "scheduling produced no target endpoint")
        if trace is not None:
            trace.primary = outcome.primary_profile
        if span is not None:
            span.set("epp.profile.primary", outcome.primary_profile)
            span.set(ATTR_PICKED, [e.key for e in outcome.targets])
        return outcome


def _run_recorded(
    name: str,
    profile: SchedulerProfile,
    cycle: CycleState,
    request: InferenceRequest,
    candidates: Sequence[Endpoint],
    observer: SchedulerObserver,
    trace: DecisionTrace | None,
    span: Span | None,
    results: dict[str, ProfileRunResult | None],
    failures: dict[str, str],
) -> None:
    """One profile run recorded in the decision trace and/or a span (the untraced path is inline)."""
    ptrace = None
    if trace is not None:
        ptrace = ProfileTrace(profile=name, candidates=tuple(e.key for e in candidates))
        trace.profiles.append(ptrace)
    pspan = None if span is None else _profile_span(span, name, len(candidates))
    try:
        results[name] = profile.run(cycle, request, candidates, observer, ptrace, pspan)
    except ProfileFailure as failure:
        results[name] = None
        failures[name] = str(failure)
        if ptrace is not None:
            ptrace.failure = str(failure)
        if pspan is not None:
            pspan.fail(str(failure))
    finally:
        if pspan is not None:
            _end_profile_span(pspan, results.get(name))


def _profile_span(parent: Span, name: str, candidates: int) -> Span:
    span = parent.child(PROFILE)
    span.set(ATTR_PROFILE, name)
    span.set(ATTR_CANDIDATES, candidates)
    return span


def _end_profile_span(span: Span, result: ProfileRunResult | None) -> None:
    if result is not None:
        span.set(ATTR_PICKED, [e.key for e in result.targets])
    span.end()
