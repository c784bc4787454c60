"""The packaging facts that can drift: what the Comfy Registry and ComfyUI-Manager read from
pyproject.toml, requirements.txt, LICENSE and the icon, checked against the rest of the repository."""

from __future__ import annotations

import pathlib
import re
import xml.etree.ElementTree as ET

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
COMFY = PYPROJECT["tool"]["comfy"]
ICON = ROOT / "icon.svg"
# the first lines of the licence texts this project may declare (SPDX id -> heading words)
LICENCE_HEADINGS = {"Apache-2.0": ("Apache License", "Version 2.0, January 2004")}
# requirements.txt never names these: installing any of them can replace the user's torch build
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "xformers"}
# what the registry accepts (ComfyUI comfy_config/config_parser.py): one value outside these
# lists and the registry records no OS, or no accelerator, at all
REGISTRY_OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
REGISTRY_ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend", "GPU :: Apple Metal"}


def _name(requirement: str) -> str:
    """The normalised project name of a requirement line (PEP 503), markers and versions dropped."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"not a requirement: {requirement!r}"
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _requirement_lines() -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return [line for line in lines if line]


def test_requires_comfyui_is_the_version_ci_installs():
    setup = (ROOT / "scripts" / "setup_comfyui.sh").read_text()
    (installed,) = re.findall(r"^version=(\S+)$", setup, re.MULTILINE)
    assert COMFY.get("requires-comfyui") == f">={installed}", (
        f"[tool.comfy] requires-comfyui is {COMFY.get('requires-comfyui')!r}, but the suite runs on ComfyUI "
        f"{installed} (scripts/setup_comfyui.sh): make it '>={installed}'"
    )
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"ComfyUI {installed} or newer" in readme, "the README's install paragraph names another minimum ComfyUI"


def test_license_file_is_the_declared_licence():
    declared = PROJECT["license"]
    if "file" in declared:
        assert (ROOT / declared["file"]).is_file(), f"pyproject names {declared['file']}, which is missing"
        return
    spdx = declared["text"]
    assert spdx in LICENCE_HEADINGS, f"pyproject declares {spdx!r}: add its LICENSE heading to this test"
    licence = ROOT / "LICENSE"
    assert licence.is_file(), "LICENSE is missing"
    text = licence.read_text()
    head = [line.strip() for line in text.splitlines() if line.strip()][:2]
    assert tuple(head) == LICENCE_HEADINGS[spdx], f"LICENSE starts {head}, not the {spdx} text"
    assert "END OF TERMS AND CONDITIONS" in text, "LICENSE is not the whole licence text"


def test_icon_exists_and_fits_the_registry():
    assert ICON.is_file(), "icon.svg is missing"
    svg = ET.parse(ICON).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    width, height = float(svg.get("width")), float(svg.get("height"))
    _, _, view_width, view_height = map(float, svg.get("viewBox").split())
    # the registry asks for a square icon of at most 400x400
    assert width == height <= 400 and view_width == view_height
    # [tool.comfy] Icon must be a URL: empty until the repository is public, then the icon's raw URL
    icon = COMFY.get("Icon", "")
    assert icon == "" or (icon.startswith("https://") and icon.endswith("/icon.svg")), icon


def test_requirements_never_install_torch_and_are_all_project_dependencies():
    names = [_name(line) for line in _requirement_lines()]
    assert not TORCH_FAMILY & set(names), f"requirements.txt names {sorted(TORCH_FAMILY & set(names))}"
    # The reverse need not hold: the pyproject also lists torch (for `pip install -e .`) and what
    # ComfyUI itself brings (einops, safetensors, numpy, tqdm), which requirements.txt leaves out.
    dependencies = {_name(dependency) for dependency in PROJECT["dependencies"]}
    missing = [name for name in names if name not in dependencies]
    assert not missing, f"requirements.txt names {missing}, which [project] dependencies lack"


def test_registry_fields_are_well_formed():
    # the node id: https://docs.comfy.org/registry/specifications
    name = PROJECT["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", name), name
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"]), "the registry wants X.Y.Z"
    for field in ("PublisherId", "DisplayName"):
        assert COMFY.get(field), f"[tool.comfy] {field} is empty"
    classifiers = PROJECT.get("classifiers", [])
    systems = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System :: ")]
    accelerators = [c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment ::")]
    assert systems and all(s.startswith(REGISTRY_OS_PREFIXES) for s in systems), systems
    assert all(a in REGISTRY_ACCELERATORS for a in accelerators), accelerators
    for url in PROJECT.get("urls", {}).values():
        assert url.startswith("https://"), url
