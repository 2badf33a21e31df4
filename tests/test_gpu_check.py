"""benchmarks/gpu_check.py runs where only the GPU machine's packages are installed (here on the CPU, tiny sizes).

The GPU machine has torch, transformers, peft, safetensors, tokenizers, numpy, scikit-learn and OpenCV, but
none of av, mlflow, kfp, kserve, faiss, mediapipe, minio. The script runs in a Python started with ``-S`` whose
only packages are a copy of this environment's site-packages (symlinks) without those: for it they are not
installed, exactly as there (``importlib.util.find_spec`` finds nothing, no distribution metadata).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("av", "mlflow", "kfp", "kserve", "faiss", "mediapipe", "minio", "evidently", "moto", "skimage")


def _site_packages_without(absent: tuple[str, ...], dest: Path) -> Path:
    dest.mkdir()
    for folder in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]):
        for entry in Path(folder).iterdir():
            top = entry.name.split("-")[0].split(".")[0].lower()
            if top in absent or any(top.startswith(f"{name}_") for name in absent) or (dest / entry.name).exists():
                continue
            (dest / entry.name).symlink_to(entry)
    return dest


@pytest.mark.slow
def test_gpu_check_runs_without_the_project_only_packages(tmp_path):
    site = _site_packages_without(ABSENT, tmp_path / "site-packages")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONHOME", None)

    def python(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-S", *args]
        return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    # The emulation holds: the absent packages cannot be imported, the present ones can.
    probe = "import importlib.util as u; print([n for n in {names} if u.find_spec(n)])"
    assert python("-c", probe.format(names=list(ABSENT))).stdout.strip() == "[]"
    assert python("-c", probe.format(names=["torch", "transformers", "peft", "sklearn"])).stdout.count("'") == 8

    args = ["--device", "cpu", "--tiny", "--precisions", "bf16,fp16", "--videos", "8", "--frames", "2"]
    args += ["--batch-size", "4", "--lipsync-videos", "6", "--lipsync-epochs", "2"]
    done = python(str(ROOT / "benchmarks" / "gpu_check.py"), *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "fp16 needs CUDA (a GradScaler on the GPU): skipped on cpu" in out
    for check in ("finetune_clip lora bf16", "finetune_clip hybrid bf16", "finetune_clip full bf16"):
        assert f"ok {check}: " in out, check
    assert '"path": "components.finetune_clip.model (kserve not installed)"' in out
    assert "ok finetune_lipsync bf16: " in out and "ok lipsync predictor: " in out
    assert "lora/full bf16: epoch time" in out and "hybrid/full bf16: epoch time" in out
    assert out.rstrip().endswith("ALL CHECKS PASSED")
