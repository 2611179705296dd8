"""Chart-test fixtures: the real helm binary (fetched once into .cache/), offline helm homes, renders."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helmbin import HelmUnavailable, ensure_helm

HERE = Path(__file__).resolve().parent
CHART = HERE.parents[1] / "charts" / "inferencepool"
VALUES = HERE / "values"
BAD_VALUES = HERE / "bad"
NAMESPACE = "inference"
RELEASE = "llama"


class RenderError(AssertionError):
    """helm refused to render; the message holds helm's stderr."""


@dataclass
class Helm:
    binary: Path
    env: dict[str, str]
    _renders: dict[tuple[Any, ...], list[dict[str, Any]]] = field(default_factory=dict)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, timeout=60
        )

    def template(
        self,
        *values_files: Path,
        sets: Sequence[str] = (),
        namespace: str = NAMESPACE,
        release: str = RELEASE,
        extra: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """`helm template` the chart and return the rendered objects (cached per arguments)."""
        key = (tuple(map(str, values_files)), tuple(sets), namespace, release, tuple(extra))
        if key not in self._renders:
            args = ["template", release, str(CHART), "--namespace", namespace, *extra]
            for f in values_files:
                args += ["-f", str(f)]
            for s in sets:
                args += ["--set", s]
            proc = self.run(*args)
            if proc.returncode != 0:
                raise RenderError(proc.stderr)
            self._renders[key] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
        return self._renders[key]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        binary = ensure_helm()
    except HelmUnavailable as e:
        pytest.fail(f"the chart tests need helm and could not get it: {e}", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        KUBECONFIG=str(home / "no-kubeconfig"),  # never talk to a cluster
    )
    return Helm(binary, env)
