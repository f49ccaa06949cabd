"""A regular (non-editable) install carries the presets and the bundled assets: built as a wheel and imported from
there, away from the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_presets_and_assets_and_reads_them_outside_the_source_tree(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheel"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "wheel").glob("distill-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = {str(p.relative_to(ROOT)) for p in (ROOT / "distill" / "configs").rglob("*.yaml")}
    assert presets and presets <= names
    assert "distill/assets/teachers/mnist-flow/unet/diffusion_pytorch_model.safetensors" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import distill, sys; from distill.config import read_config; from distill.teachers import load_teacher; "
            "assert distill.__file__.startswith(sys.argv[1]), distill.__file__; "
            "print(read_config('quickstart', 'distill')['teacher'], load_teacher('mnist-flow').sample_shape)")
    out = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "mnist-flow"
