"""CONTRIBUTING.md's recipes, checked: every op of the backend table has its reference, its family
module, its public name, its test file, its benchmark (in `cosmos bench kernels`), and, where it has
a Triton backend, its AOT launch specs; the layout table of the README names only paths that exist."""
import importlib
import re
from pathlib import Path

import pytest

import cosmos_kernels as ck
from cosmos_kernels import dispatch

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = sorted({info.family for info in dispatch.OPS.values()})


@pytest.mark.parametrize("family", FAMILIES)
def test_every_kernel_family_has_its_rooms(family):
    assert (ROOT / "cosmos_kernels" / "reference" / f"{family}.py").is_file(), "the reference (the spec)"
    assert (ROOT / "cosmos_kernels" / f"{family}.py").is_file(), "the family module"
    assert (ROOT / "tests" / f"test_{family}.py").is_file(), "the test file"
    bench = importlib.import_module(f"bench.{family}")
    assert callable(bench.run), "the benchmark's run(device, quick, rows=None)"
    from bench.kernels import FAMILIES as BENCHED
    assert family in BENCHED, "listed in bench/kernels.py FAMILIES (so `cosmos bench kernels` runs it)"


@pytest.mark.parametrize("op", list(dispatch.OPS))
def test_every_op_is_public_and_its_triton_kernels_have_aot_specs(op):
    info = dispatch.OPS[op]
    assert op in ck._EXPORTS and ck._EXPORTS[op] == f"cosmos_kernels.{info.family}"
    if "triton" in info.backends:
        specs = importlib.import_module(f"cosmos_kernels.triton.{info.family}").AOT_SPECS
        assert specs, f"cosmos_kernels/triton/{info.family}.py has no AOT_SPECS"


def test_the_readme_layout_table_names_paths_that_exist():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"^\| `([^`]+)`", table, re.M)
    assert len(paths) >= 10
    for path in paths:
        concrete = path.replace("<family>", "adaln").replace("<module>", "trainer")
        assert list(ROOT.glob(concrete.rstrip("/"))), f"README layout row {path!r} names nothing in the tree"
