"""The functions run on arm64, and ``sam build`` on this x86_64 machine still makes an arm64 layer.

For ``BuildArchitecture: arm64`` SAM asks pip for aarch64 wheels (``--platform manylinux2014_aarch64``);
a dependency without one would be built from source here, for x86_64, and fail only in Lambda
(``ImportError`` at cold start). So every compiled file in the built layer must be aarch64 (read from
its ELF header), and every wheel pure Python or tagged aarch64.

Needs ``.aws-sam/build`` (``make build``); MAILSYNC_SKIP_BUILD_TEST=1 skips it, as for test_built_artifact.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from devstack.provision import load_template
from tests.integration.layer_support import (
    EM_AARCH64,
    EM_X86_64,
    compiled_files,
    elf_machine,
    foreign_files,
    top_level_packages,
    wheel_tags,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO_ROOT / ".aws-sam" / "build"
LAYER = "SharedLayer"
# Dependencies known to ship compiled code: the scan must find them, or it is looking in the wrong place.
KNOWN_COMPILED = {"pydantic_core", "wrapt"}


@pytest.fixture(scope="module")
def source_template() -> dict[str, Any]:
    return load_template(REPO_ROOT / "template.yaml")


@pytest.fixture(scope="module")
def layer_dir() -> Path:
    if os.environ.get("MAILSYNC_SKIP_BUILD_TEST") == "1":
        pytest.skip("MAILSYNC_SKIP_BUILD_TEST=1")
    built = BUILD_DIR / "template.yaml"
    if not built.is_file():
        pytest.fail(
            "`.aws-sam/build` is missing: run `make build` first (or MAILSYNC_SKIP_BUILD_TEST=1)", pytrace=False
        )
    layer = load_template(built)["Resources"][LAYER]
    if layer.get("Metadata", {}).get("BuildArchitecture") != "arm64":
        pytest.fail("the build is stale (the layer was not built for arm64): run `make build`", pytrace=False)
    return BUILD_DIR / layer["Properties"]["ContentUri"] / "python"


def test_functions_and_layer_are_arm64(source_template: dict[str, Any]) -> None:
    assert source_template["Globals"]["Function"]["Architectures"] == ["arm64"]
    for logical_id, resource in source_template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            assert resource["Properties"].get("Architectures", ["arm64"]) == ["arm64"], logical_id
    layer = source_template["Resources"][LAYER]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Metadata"]["BuildArchitecture"] == "arm64"


def test_every_compiled_file_in_the_layer_is_aarch64(layer_dir: Path) -> None:
    compiled = compiled_files(layer_dir)
    packages = {path.relative_to(layer_dir).parts[0] for path in compiled}
    assert packages >= KNOWN_COMPILED, f"no compiled files found for {KNOWN_COMPILED - packages}"
    assert foreign_files(layer_dir, EM_AARCH64) == []


def test_every_wheel_in_the_layer_is_pure_python_or_aarch64(layer_dir: Path) -> None:
    wrong = {}
    for dist_info in sorted(layer_dir.glob("*.dist-info")):
        purelib, tags = wheel_tags(dist_info)
        pure = purelib and all(tag.endswith("-none-any") for tag in tags)
        if not pure and not (tags and all(tag.endswith("_aarch64") for tag in tags)):
            wrong[dist_info.name] = tags
    assert wrong == {}, "wheels neither pure Python nor aarch64"
    assert len(list(layer_dir.glob("*.dist-info"))) >= 10  # the whole dependency tree, not an empty glob


def test_an_x86_64_file_in_the_layer_is_found(tmp_path: Path) -> None:
    # The check above can fail: this machine's own pydantic_core (x86_64) placed in a copy of a layer.
    spec = importlib.util.find_spec("pydantic_core._pydantic_core")
    assert spec is not None and spec.origin
    native = Path(spec.origin)
    if elf_machine(native) != EM_X86_64:
        pytest.skip("this test is written for an x86_64 build machine")
    (tmp_path / "pydantic_core").mkdir()
    shutil.copy(native, tmp_path / "pydantic_core" / native.name)
    (tmp_path / "pydantic_core" / "__init__.py").write_text("")
    assert foreign_files(tmp_path, EM_AARCH64) == [f"pydantic_core/{native.name}: x86_64"]
    assert foreign_files(tmp_path, EM_X86_64) == []


def test_elf_machine_reads_the_header_in_its_byte_order(tmp_path: Path) -> None:
    little = tmp_path / "little.so"
    little.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 11 + EM_AARCH64.to_bytes(2, "little") + b"\0" * 44)
    big = tmp_path / "big.so"
    big.write_bytes(b"\x7fELF\x02\x02\x01" + b"\0" * 11 + EM_X86_64.to_bytes(2, "big") + b"\0" * 44)
    text = tmp_path / "not-elf.so"
    text.write_bytes(b"#!/bin/sh\n" * 5)
    assert (elf_machine(little), elf_machine(big), elf_machine(text)) == (EM_AARCH64, EM_X86_64, None)


def test_compiled_distributions_are_named_by_their_record(layer_dir: Path) -> None:
    # test_built_artifact swaps exactly these for this machine's copies to import the handlers here.
    dist = next(layer_dir.glob("pydantic_core-*.dist-info"))
    assert top_level_packages(dist) == {"pydantic_core"}
