"""The `sam build` output imports like it would in Lambda: function dir + layer + what the runtime ships.

Each handler is imported in a clean interpreter (``python -I -S``) whose sys.path holds ONLY
the function's build dir, the layer's ``python/`` dir and symlinks to the packages the
Lambda Python runtime itself provides (boto3 & co.). Anything else - pydantic, Powertools,
imapclient, pynamodb, the ``mailsync`` package - must therefore come from the built layer.

The layer is built for arm64; on another machine its compiled distributions (pydantic_core, wrapt)
cannot load, so exactly those are taken from this venv at the same versions (``native_dir``);
test_layer_architecture checks the layer's own copies are aarch64.

Needs ``.aws-sam/build`` (``make build``); set MAILSYNC_SKIP_BUILD_TEST=1 to skip.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from devstack.provision import load_template, provision
from tests.integration.layer_support import elf_machine, foreign_files, host_machine, top_level_packages

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_TEMPLATE = REPO_ROOT / "template.yaml"
BUILD_DIR = REPO_ROOT / ".aws-sam" / "build"
BUILT_TEMPLATE = BUILD_DIR / "template.yaml"
LAYER_LOGICAL_ID = "SharedLayer"
FUNCTION_TYPE = "AWS::Serverless::Function"

# What the Lambda python3.12 runtime puts on sys.path itself (module name -> distribution name).
RUNTIME_PROVIDED = {
    "boto3": "boto3",
    "botocore": "botocore",
    "s3transfer": "s3transfer",
    "jmespath": "jmespath",
    "dateutil": "python_dateutil",
    "urllib3": "urllib3",
    "six": "six",
}
# Must be importable from the layer alone.
LAYER_MODULES = ("mailsync", "pydantic", "pydantic_core", "aws_lambda_powertools", "imapclient", "pynamodb")

_PROBE = r"""
import importlib, json, sys
config = json.loads(sys.argv[1])
sys.path[:0] = config["path"]
module = importlib.import_module(config["module"])
handler = getattr(module, config["attribute"], None)
origins = {}
for name in config["layer_modules"]:
    origins[name] = getattr(importlib.import_module(name), "__file__", None)
print(json.dumps({
    "callable": callable(handler),
    "handler_file": module.__file__,
    "origins": origins,
    "loaded": sorted({f for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None))}),
    "sys_path": sys.path,
    "flags": {"isolated": sys.flags.isolated, "no_site": sys.flags.no_site},
}))
"""


def _functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v.get("Type") == FUNCTION_TYPE}


SOURCE_FUNCTIONS = sorted(_functions(load_template(SOURCE_TEMPLATE)))


@pytest.fixture(scope="module")
def built_template() -> dict[str, Any]:
    if os.environ.get("MAILSYNC_SKIP_BUILD_TEST") == "1":
        pytest.skip("MAILSYNC_SKIP_BUILD_TEST=1")
    if not BUILT_TEMPLATE.is_file():
        pytest.fail(
            f"{BUILT_TEMPLATE.relative_to(REPO_ROOT)} is missing: run `make build` first "
            "(or set MAILSYNC_SKIP_BUILD_TEST=1)",
            pytrace=False,
        )
    built = load_template(BUILT_TEMPLATE)
    stale = set(SOURCE_FUNCTIONS) ^ set(_functions(built))
    if stale:
        pytest.fail(f"the build is stale (functions {sorted(stale)} differ): run `make build` first", pytrace=False)
    return built


@pytest.fixture(scope="module")
def layer_dir(built_template: dict[str, Any]) -> Path:
    layer = built_template["Resources"][LAYER_LOGICAL_ID]
    path = BUILD_DIR / layer["Properties"]["ContentUri"] / "python"
    assert path.is_dir(), f"{path} missing: the layer must be built with BuildMethod python3.12"
    return path


@pytest.fixture(scope="module")
def native_dir(layer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """Symlinks to this venv's copies of the layer's distributions compiled for another CPU, and their modules."""
    target = tmp_path_factory.mktemp("native")
    swapped: set[str] = set()
    for dist_info in sorted(layer_dir.glob("*.dist-info")):
        modules = top_level_packages(dist_info)
        # A top-level extension module is a single file (cffi's _cffi_backend.cpython-312-<cpu>-linux-gnu.so).
        single = {m for m in modules if (layer_dir / m).is_file() and elf_machine(layer_dir / m) is not None}
        foreign = [m for m in single if elf_machine(layer_dir / m) != host_machine()]
        if not foreign and not any(
            foreign_files(layer_dir / m, host_machine()) for m in modules if (layer_dir / m).is_dir()
        ):
            continue
        name, _, version = dist_info.name.removesuffix(".dist-info").rpartition("-")
        assert importlib.metadata.version(name) == version, f"the venv's {name} is not the layer's {version}"
        for module in modules - single:
            spec = importlib.util.find_spec(module)
            assert spec is not None and spec.submodule_search_locations, f"{module} not installed in the test venv"
            (target / module).symlink_to(spec.submodule_search_locations[0])
            swapped.add(module)
        for file in single:
            module = file.split(".", 1)[0]
            spec = importlib.util.find_spec(module)
            assert spec is not None and spec.origin, f"{module} not installed in the test venv"
            (target / Path(spec.origin).name).symlink_to(spec.origin)
            swapped.add(module)
    return target, swapped


@pytest.fixture(scope="module")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Symlinks to the venv's copies of what the Lambda runtime provides."""
    target = tmp_path_factory.mktemp("lambda-runtime")
    for module, dist in RUNTIME_PROVIDED.items():
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"{module} not installed in the test venv"
        source = Path(spec.submodule_search_locations[0]) if spec.submodule_search_locations else Path(spec.origin)
        (target / source.name).symlink_to(source)
        for dist_info in source.parent.glob(f"{dist}-*.dist-info"):
            (target / dist_info.name).symlink_to(dist_info)
    return target


@pytest.fixture(scope="module")
def function_env(built_template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The built template's Globals env, resolved against a throwaway moto stack."""
    fake = {
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
    }
    saved = {k: os.environ.get(k) for k in fake}
    os.environ.update(fake)
    try:
        with mock_aws():
            variables = provision(built_template, endpoint_url=None)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    nowhere = tmp_path_factory.mktemp("no-aws-config")
    return {
        **variables,
        **fake,
        "AWS_CONFIG_FILE": str(nowhere / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(nowhere / "credentials"),
        "POWERTOOLS_TRACE_DISABLED": "true",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(nowhere),
    }


def test_layer_layout(layer_dir: Path) -> None:
    assert (layer_dir / "mailsync" / "__init__.py").is_file()
    assert not (layer_dir / "python").exists(), "layer has python/python: ContentUri must not contain python/"
    for module in LAYER_MODULES:
        assert (layer_dir / module).is_dir(), f"{module} missing from the built layer"


@pytest.mark.parametrize("logical_id", SOURCE_FUNCTIONS)
def test_handler_imports_from_build_and_layer_only(
    logical_id: str,
    built_template: dict[str, Any],
    layer_dir: Path,
    native_dir: tuple[Path, set[str]],
    runtime_dir: Path,
    function_env: dict[str, str],
) -> None:
    native, swapped = native_dir
    assert sys.version_info[:2] == (3, 12), "the layer is built for python3.12"
    props = built_template["Resources"][logical_id]["Properties"]
    function_dir = BUILD_DIR / props["CodeUri"]
    assert function_dir.is_dir(), f"{function_dir} missing: run `make build` first"
    module, _, attribute = props["Handler"].rpartition(".")

    config = {
        "path": [str(function_dir), str(native), str(layer_dir), str(runtime_dir)],
        "module": module,
        "attribute": attribute,
        "layer_modules": list(LAYER_MODULES),
    }
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _PROBE, json.dumps(config)],
        cwd=function_dir,
        env=function_env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"importing {props['Handler']} of {logical_id} failed:\n{result.stderr}"
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["flags"] == {"isolated": 1, "no_site": 1}
    assert report["callable"], f"{props['Handler']} is not callable"
    assert Path(report["handler_file"]).is_relative_to(function_dir)
    for name, origin in report["origins"].items():
        home = native if name in swapped else layer_dir
        assert origin and Path(origin).is_relative_to(home), f"{name} imported from {origin}, not {home}"

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    platstdlib = Path(sysconfig.get_paths()["platstdlib"])
    allowed = (function_dir, native, layer_dir, runtime_dir, stdlib, platstdlib)
    leaked = [
        f
        for f in report["loaded"]
        if not any(Path(f).is_relative_to(root) for root in allowed)
        or ("site-packages" in Path(f).parts and not Path(f).is_relative_to(runtime_dir))
    ]
    assert not leaked, f"modules imported from outside the Lambda-like path: {leaked[:10]}"
