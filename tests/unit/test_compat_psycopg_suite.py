"""The psycopg-suite harness (compat/psycopg_suite.py): reading junit XML and comparing runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "compat" / "psycopg_suite.py"


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compat_psycopg_suite", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def junit(path: Path, cases: str) -> Path:
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>')
    return path


CASES_DIRECT = """
<testcase classname="tests.test_a" name="test_ok" file="tests/test_a.py" line="1"/>
<testcase classname="tests.test_a.TestX" name="test_m[p=1]" file="tests/test_a.py" line="9"/>
<testcase classname="tests.types.test_b" name="test_skip" file="tests/types/test_b.py" line="3"><skipped type="pytest.skip" message="no hstore"/></testcase>
<testcase classname="tests.test_a" name="test_broken" file="tests/test_a.py" line="5"><failure message="AssertionError: 1 != 2">long text</failure></testcase>
<testcase classname="tests.test_a" name="test_xf" file="tests/test_a.py" line="7"><skipped type="pytest.xfail" message="expected"/></testcase>
<testcase classname="tests.test_a" name="test_gone" file="tests/test_a.py" line="8"/>
"""
CASES_PROXY = """
<testcase classname="tests.test_a" name="test_ok" file="tests/test_a.py" line="1"><failure message="psycopg.errors.SyntaxError: syntax error at or near &quot;foo&quot;&#10;LINE 1: foo">tb</failure><error message="failed on teardown with &quot;boom&quot;">tb</error></testcase>
<testcase classname="tests.test_a.TestX" name="test_m[p=1]" file="tests/test_a.py" line="9"><error message="failed on setup with &quot;OperationalError: 42 refused&quot;">tb</error></testcase>
<testcase classname="tests.types.test_b" name="test_skip" file="tests/types/test_b.py" line="3"/>
<testcase classname="tests.test_a" name="test_broken" file="tests/test_a.py" line="5"/>
<testcase classname="tests.test_a" name="test_xf" file="tests/test_a.py" line="7"><skipped type="pytest.xfail" message="expected"/></testcase>
"""


def test_read_junit_gives_node_ids_statuses_and_first_lines(harness: ModuleType, tmp_path: Path) -> None:
    results = harness.read_junit(junit(tmp_path / "d.xml", CASES_DIRECT))
    assert {k: v.status for k, v in results.items()} == {
        "tests/test_a.py::test_ok": "passed",
        "tests/test_a.py::TestX::test_m[p=1]": "passed",
        "tests/types/test_b.py::test_skip": "skipped",
        "tests/test_a.py::test_broken": "failed",
        "tests/test_a.py::test_xf": "xfailed",
        "tests/test_a.py::test_gone": "passed",
    }
    proxied = harness.read_junit(junit(tmp_path / "p.xml", CASES_PROXY))
    ok = proxied["tests/test_a.py::test_ok"]
    assert ok.status == "failed"
    assert ok.message == 'psycopg.errors.SyntaxError: syntax error at or near "foo" | teardown: failed on teardown with "boom"'


def test_compare_lists_what_fails_only_through_dbsentry(harness: ModuleType, tmp_path: Path) -> None:
    direct = harness.read_junit(junit(tmp_path / "d.xml", CASES_DIRECT))
    proxied = harness.read_junit(junit(tmp_path / "p.xml", CASES_PROXY))
    recheck = {"tests/test_a.py::test_ok": harness.Outcome("tests/test_a.py::test_ok", "passed")}
    cmp = harness.compare(direct, proxied, recheck)
    assert [(e["test"], e["status"], e["recheck"]) for e in cmp.only_dbsentry] == [
        ("tests/test_a.py::TestX::test_m[p=1]", "error", "not run"),
        ("tests/test_a.py::test_ok", "failed", "passed"),
    ]
    assert [e["test"] for e in cmp.only_direct] == ["tests/test_a.py::test_broken"]
    assert cmp.missing_dbsentry == ["tests/test_a.py::test_gone"]
    assert cmp.direct == {"passed": 3, "failed": 1, "error": 0, "skipped": 1, "xfailed": 1, "total": 6}
    report = harness.render(cmp, {"suite": "s", "version": "v", "impl": "i", "server": "15", "pytest_options": "-q", "elapsed_direct": 1.0, "elapsed_dbsentry": 2.0})
    assert "## Pass directly, fail through dbsentry: 2" in report
    assert "### 1 x failed on setup with \"…\"" in report


def test_signature_blurs_numbers_and_names(harness: ModuleType) -> None:
    a = harness.signature('psycopg.errors.UndefinedTable: relation "t_1" does not exist (pid 1234)')
    b = harness.signature('psycopg.errors.UndefinedTable: relation "t_2" does not exist (pid 99)')
    assert a == b == 'psycopg.errors.UndefinedTable: relation "…" does not exist (pid N)'


def test_test_paths_in_extra_arguments_replace_the_whole_suite(harness: ModuleType, tmp_path: Path) -> None:
    args = harness.parse_args(["--psycopg-src", "x", "--", "-x", "tests/test_copy.py"])
    cmd = harness.pytest_command(Path("py"), args, tmp_path / "j.xml", tmp_path / "c")
    assert cmd[-2:] == ["-x", "tests/test_copy.py"]
    assert "--ignore=tests/pool" in cmd and "not mypy" in cmd
    rerun = harness.pytest_command(Path("py"), args, tmp_path / "j.xml", tmp_path / "c", ["tests/test_a.py::test_ok"])
    assert rerun[-2:] == ["-x", "tests/test_a.py::test_ok"]
    assert harness.pytest_command(Path("py"), harness.parse_args([]), tmp_path / "j.xml", tmp_path / "c")[-1] == "tests"
