"""Every shipped profile loads and builds with the real plugin catalogue, and says when to use it."""

from __future__ import annotations

from pathlib import Path

import pytest

import epp.plugins
from epp.builtins import default_registry
from epp.config import build_pipeline, load_config_file

pytestmark = pytest.mark.skipif(
    not hasattr(epp.plugins, "register_builtins"), reason="the built-in plugin catalogue is not there yet"
)

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
FILES = sorted(PROFILES.glob("*.yaml"))


def test_the_documented_profiles_exist() -> None:
    assert {f.name for f in FILES} >= {
        "default.yaml",
        "prefix-heavy.yaml",
        "lora.yaml",
        "least-loaded.yaml",
        "random.yaml",
    }


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_profile_loads_builds_and_has_a_when_to_use_header(path: Path) -> None:
    registry = default_registry()
    config = load_config_file(path, registry=registry, environ={})
    assert config.warnings == ()
    pipeline = build_pipeline(config, registry)
    assert pipeline.scheduler.profiles
    header = path.read_text().split("apiVersion:")[0]
    assert header.startswith("#") and "When to use" in header


def test_default_profile_matches_the_built_in_default() -> None:
    registry = default_registry()
    from epp.config import load_default_config

    builtin = build_pipeline(load_default_config(registry, environ={}), registry)
    shipped = build_pipeline(
        load_config_file(PROFILES / "default.yaml", registry=registry, environ={}), registry
    )

    def shape(p):  # type: ignore[no-untyped-def]
        prof = p.scheduler.profiles["default"]
        return [(w.scorer.typed_name.type, w.weight) for w in prof.scorers], prof.picker.typed_name.type

    assert (
        shape(shipped)
        == shape(builtin)
        == (
            [("queue-scorer", 2.0), ("kv-cache-utilization-scorer", 2.0), ("prefix-cache-scorer", 3.0)],
            "max-score-picker",
        )
    )


def test_random_profile_has_only_a_random_picker() -> None:
    registry = default_registry()
    pipeline = build_pipeline(
        load_config_file(PROFILES / "random.yaml", registry=registry, environ={}), registry
    )
    profile = pipeline.scheduler.profiles["default"]
    assert (profile.filters, profile.scorers, profile.picker.typed_name.type) == ((), (), "random-picker")
