"""Package-wide properties: documented public API, lint and format."""

import inspect
import pathlib
import shutil
import subprocess

import pytest

import mgd
import mgd.experiments
import mgd.outer

ROOT = pathlib.Path(__file__).parent.parent
# The package and the subpackages that re-export a layer's public names.
PACKAGES = [
    mgd,
    mgd.outer,
    mgd.outer.selection,
    mgd.outer.lr,
    mgd.outer.poison,
    mgd.experiments,
    mgd.train,
]


def _public_names():
    return [
        (package, name)
        for package in PACKAGES
        for name in dir(package)
        if not name.startswith("_") and name != "annotations"
    ]


@pytest.mark.parametrize("package, name", _public_names(), ids=lambda x: getattr(x, "__name__", x))
def test_public_name_has_docstring(package, name):
    obj = getattr(package, name)
    if inspect.ismodule(obj) or callable(obj):
        assert inspect.getdoc(obj), f"{package.__name__}.{name} has no docstring"


def test_ruff_lint_and_format():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    lint = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout
