"""The wheel carries everything the commands read at run time: the shipped recipes and accelerate
configs, the embedded models and the benchmarks, the page template of ``mpdistill view``, and the
license (``make test-wheel`` installs it in a fresh environment and runs the demo from outside the
repository)."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mpdistill"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(the wheel's file names, the wheel, the build's output)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # A copy of the sources: an in-tree build reuses build/ from earlier builds, whose stale files could
    # stand in for one the package data no longer names.
    src = tmp / "src"
    shutil.copytree(PACKAGE, src / "mpdistill", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    (wheel,) = (tmp / "dist").glob("mpdistill-*.whl")
    with zipfile.ZipFile(wheel) as z:
        yield set(z.namelist()), z, output


def _shipped(folder: Path, pattern: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in folder.glob(pattern) if p.is_file() and "__pycache__" not in p.parts}


def test_the_wheel_holds_the_recipes_and_accelerate_configs(built):
    names, _, _ = built
    recipes = _shipped(PACKAGE / "recipes", "*.yaml") | _shipped(PACKAGE / "recipes", "accelerate/*.yaml")
    assert {"mpdistill/recipes/embedded.yaml", "mpdistill/recipes/embedded-verbose-teacher.yaml",
            "mpdistill/recipes/qwen3-1.7b_from_qwen3-8b.yaml",
            "mpdistill/recipes/accelerate/single_gpu.yaml", "mpdistill/recipes/accelerate/cpu_2proc.yaml"} <= recipes
    assert recipes <= names


def test_the_wheel_holds_the_embedded_models_and_benchmarks(built):
    names, _, _ = built
    assets = _shipped(PACKAGE / "assets", "**/*")
    for world in ("concise-teacher", "verbose-teacher"):  # the two embedded worlds
        for model in ("student", "teacher"):
            assert {f"mpdistill/assets/embedded/{world}/{model}/model.safetensors",
                    f"mpdistill/assets/embedded/{world}/{model}/tokenizer.json"} <= assets
    for benchmark in ("gsm8k", "math500", "aime24", "aime25", "amc23"):
        assert f"mpdistill/assets/benchmarks/{benchmark}/test.jsonl" in assets
    assert assets <= names, sorted(assets - names)


def test_the_wheel_holds_the_view_page_template(built):
    import mpdistill.view
    from mpdistill.view.page import ASSETS

    names, _, _ = built
    source = Path(mpdistill.view.__file__).parent
    # Every template file beside the code is one the page is built from, and the wheel carries each.
    assert {p.name for p in source.iterdir() if p.suffix in (".html", ".css", ".js")} == set(ASSETS)
    assert {f"mpdistill/view/{name}" for name in ASSETS} <= names


def test_the_wheel_holds_only_the_package_and_its_license(built):
    names, z, _ = built
    assert all(re.match(r"mpdistill(/|-[^/]+\.dist-info/)", name) for name in names), sorted(names)
    (license_file,) = [n for n in names if re.fullmatch(r"mpdistill-[^/]+\.dist-info/licenses/LICENSE", n)]
    assert z.read(license_file).decode() == (ROOT / "LICENSE").read_text()
    assert "Apache License" in z.read(license_file).decode()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = z.read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text and "License-File: LICENSE" in text
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "mpdistill = mpdistill.cli:main" in z.read(entry_points).decode()


def test_building_the_wheel_prints_no_deprecation_warning(built):
    _, _, output = built
    assert [line for line in output.splitlines() if re.search("deprecat", line, re.I)] == []
