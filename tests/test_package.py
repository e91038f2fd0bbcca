"""Package-wide properties: documented public API, lint and format."""

import inspect
import pathlib
import shutil
import subprocess

import pytest

import mgd

ROOT = pathlib.Path(__file__).parent.parent


def _public_names():
    return [name for name in dir(mgd) if not name.startswith("_")]


@pytest.mark.parametrize("name", _public_names())
def test_public_name_has_docstring(name):
    obj = getattr(mgd, name)
    if inspect.ismodule(obj) or callable(obj):
        assert inspect.getdoc(obj), f"mgd.{name} has no docstring"


def test_ruff_lint_and_format():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    lint = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout
