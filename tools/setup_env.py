#!/usr/bin/env python3
"""Create or reuse the project's virtual environment: torch, a clean Detectron2, this package.

Idempotent: every step checks first and skips what is already there, so a second run costs
seconds. Standard library only (it runs before anything is installed).

Detectron2 has no PyPI release. Unless one is already importable in the environment (a user's
own source build always wins), a clean ``detectron2`` wheel is built from the PyPI wheel
``sal-detectron2==0.7.2``: only its ``detectron2/`` package, without the CPython-3.10 ``_C`` .so
(it cannot load on other Pythons) and without the unrelated top-level ``tools/`` package it also
ships, which would shadow ours.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]

SAL_WHEEL = "sal_detectron2-0.7.2-cp310-none-any.whl"
SAL_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
D2_VERSION = "0.7.2"
# The sal wheel's own requirements, less `numpy<2` (the code runs with numpy 2) and `black`
# (optional in detectron2.config.lazy), plus what upstream detectron2's setup.py requires and the
# wheel forgot (fvcore, iopath), plus setuptools<82: detectron2/model_zoo/model_zoo.py does
# `import pkg_resources`, which setuptools 82 removed (torch needs setuptools>=77.0.3).
D2_REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "packaging",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "setuptools>=77.0.3,<82",
]


def log(msg: str) -> None:
    print(f"[setup_env] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def importable(python: Path, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([str(python), "-c", code], cwd="/").returncode == 0


def pip(python: Path, *args: str) -> None:
    run([str(python), "-m", "pip", "--disable-pip-version-check", *args])


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_clean_d2_wheel(sal_wheel: Path, out_dir: Path) -> Path:
    """Repack ``sal_wheel`` as ``detectron2-<ver>-py3-none-any.whl`` with ``detectron2/`` only."""
    dist_info = f"detectron2-{D2_VERSION}.dist-info"
    target = out_dir / f"detectron2-{D2_VERSION}-py3-none-any.whl"
    records: list[tuple[str, str, str]] = []
    with (
        zipfile.ZipFile(sal_wheel) as src,
        zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        license_text = b""
        for info in src.infolist():
            name = info.filename
            if name.endswith("dist-info/LICENSE"):
                license_text = src.read(info)
            if not name.startswith("detectron2/") or name.endswith("/"):
                continue
            if name.endswith(".so"):  # compiled for CPython 3.10 only
                continue
            data = src.read(info)
            dst.writestr(name, data)
            records.append((name, _record_hash(data), str(len(data))))
        metadata = (
            "\n".join(
                [
                    "Metadata-Version: 2.1",
                    "Name: detectron2",
                    f"Version: {D2_VERSION}",
                    "Summary: Detectron2 (pure-Python package repacked from sal-detectron2 0.7.2)",
                    "Requires-Python: >=3.8",
                ]
                + [f"Requires-Dist: {r}" for r in D2_REQUIRES]
            )
            + "\n"
        )
        wheel_meta = (
            "Wheel-Version: 1.0\nGenerator: backbones-setup_env\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        )
        for fname, text in (
            ("METADATA", metadata.encode()),
            ("WHEEL", wheel_meta.encode()),
            ("top_level.txt", b"detectron2\n"),
            ("LICENSE", license_text),
        ):
            path = f"{dist_info}/{fname}"
            dst.writestr(path, text)
            records.append((path, _record_hash(text), str(len(text))))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows(records)
        writer.writerow((f"{dist_info}/RECORD", "", ""))
        dst.writestr(f"{dist_info}/RECORD", buf.getvalue())
    return target


def install_detectron2(python: Path, cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    sal = cache / SAL_WHEEL
    if not sal.exists():
        pip(
            python,
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.10",
            "sal-detectron2==0.7.2",
            "-d",
            str(cache),
        )
    digest = hashlib.sha256(sal.read_bytes()).hexdigest()
    if digest != SAL_SHA256:
        sal.unlink()
        raise SystemExit(f"{sal}: sha256 {digest} != expected {SAL_SHA256}; deleted, run again")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_clean_d2_wheel(sal, Path(tmp))
        log(f"built {wheel.name} (detectron2/ only, no _C, no tools/)")
        pip(python, "install", str(wheel))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=str(ROOT / ".venv"), help="environment to create or reuse")
    ap.add_argument("--stamp", default=None, help="file touched when everything is installed")
    args = ap.parse_args()
    t0 = time.time()
    venv = Path(args.venv).resolve()
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating virtual environment {venv}")
        run([sys.executable, "-m", "venv", str(venv)])
    if importable(python, "torch") and importable(python, "torchvision"):
        log("torch and torchvision: already installed, kept")
    else:
        pip(python, "install", *TORCH_PINS)
    if importable(python, "detectron2"):
        log("detectron2: already importable, kept (a user's own build wins)")
    else:
        install_detectron2(python, venv / "cache")
    pip(python, "install", "-e", f"{ROOT}[test]")
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
    log("pip check: " + (check.stdout.strip() or check.stderr.strip()))
    if args.stamp:
        Path(args.stamp).touch()
    log(f"environment ready in {time.time() - t0:.0f} s: {venv}")


if __name__ == "__main__":
    main()
