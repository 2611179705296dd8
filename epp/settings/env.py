"""Settings from `EPP_*` environment variables: the prefix, and the environment `parse_settings` was given.

`parse_settings` may be handed a mapping instead of `os.environ` (tests, tools); while the model is
validated, `environment(env)` makes that mapping what `EnvSource` and the model's validators read.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager

from pydantic_settings import EnvSettingsSource

__all__ = ["ENV_PREFIX", "EnvSource", "current_environ", "environment", "unknown_variables"]

ENV_PREFIX = "EPP_"

# The environment `parse_settings` was given (None = os.environ) for the pydantic-settings env source.
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "epp_environ", default=None
)


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Within the block, `EnvSource` and `current_environ()` read `env`."""
    token = _ENVIRON.set(env)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def current_environ() -> Mapping[str, str]:
    """The environment being read: the one given to `environment(...)`, else os.environ."""
    env = _ENVIRON.get()
    return os.environ if env is None else env


def unknown_variables(env: Mapping[str, str], fields: Collection[str]) -> list[str]:
    """The `EPP_*` variables of `env` (any case) that name none of `fields`, sorted."""
    prefixed = {k for k in env if k.upper().startswith(ENV_PREFIX)}
    known = {f"{ENV_PREFIX}{f.upper()}" for f in fields}
    return [name for name in sorted(prefixed) if name.upper() not in known]


class EnvSource(EnvSettingsSource):
    """The environment source, reading the mapping given to `parse_settings` (default os.environ)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRON.get()
        if env is None:
            return super()._load_env_vars()
        return {(k if self.case_sensitive else k.lower()): v for k, v in env.items()}
