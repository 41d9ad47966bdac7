"""scripts/gpu_check.sh: refuses to run without a GPU, and (slow) runs end to end on CPU at tiny shapes."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(tmp_path, **env):
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **env})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run for real")
def test_without_a_gpu_it_says_so_and_exits_3(tmp_path):
    result = _run(tmp_path)
    assert result.returncode == 3
    assert "no CUDA GPU is visible" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_runs_end_to_end_at_tiny_shapes_on_cpu(tmp_path):
    tiny = "tests/fixtures/qwen3/Qwen3-tiny.json"
    result = _run(tmp_path, GPU_CHECK_ALLOW_CPU="1", GPU_CHECK_STUDENT=tiny, GPU_CHECK_TEACHER=tiny, GPU_CHECK_BATCH="2",
                  GPU_CHECK_PROMPT_TOKENS="16", GPU_CHECK_COMPLETION_TOKENS="8", GPU_CHECK_REWRITE_TOKENS="8",
                  GPU_CHECK_REPEATS="1")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert set(report["steps"]["methods"]) == {"mpd", "opd"}
    text = (tmp_path / "out" / "bench.txt").read_text()
    assert "teacher_rewrite" in text and "MPD/OPD step time, n = 1 pairs" in text
    assert "trl 1.16.0" in (tmp_path / "out" / "gpu.txt").read_text()
