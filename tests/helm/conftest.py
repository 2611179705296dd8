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

    def run(self, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run helm; with `kubeconfig` it may talk to that cluster (e.g. tests/helm/fakeapi.py). HOME is
        then the kubeconfig's directory, where client-go keeps its discovery cache."""
        env = self.env
        if kubeconfig is not None:
            env = {**env, "KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent)}
        return subprocess.run([str(self.binary), *args], env=env, capture_output=True, text=True, timeout=60)

    def template(
        self,
        *values_files: Path,
        sets: Sequence[str] = (),
        namespace: str = NAMESPACE,
        release: str = RELEASE,
        extra: Sequence[str] = (),
        kubeconfig: Path | None = None,
    ) -> list[dict[str, Any]]:
        """`helm template` the chart and return the rendered objects (cached per arguments, except with a
        `kubeconfig`: then helm may ask that cluster, e.g. for `lookup` with `--dry-run=server`)."""
        key = (tuple(map(str, values_files)), tuple(sets), namespace, release, tuple(extra))
        if kubeconfig is None and key in self._renders:
            return self._renders[key]
        args = ["template", release, str(CHART), "--namespace", namespace, *extra]
        for f in values_files:
            args += ["-f", str(f)]
        for s in sets:
            args += ["--set", s]
        proc = self.run(*args, kubeconfig=kubeconfig)
        if proc.returncode != 0:
            raise RenderError(proc.stderr)
        objs = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
        if kubeconfig is None:
            self._renders[key] = objs
        return objs


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
