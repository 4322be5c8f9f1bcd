"""The psycopg-suite harness (compat/psycopg_suite.py): reading junit XML and comparing runs."""

from __future__ import annotations

import importlib.util
import json
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


def progress(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"event": "rep')  # a line cut by a crash
    return path


def ran(nodeid: str, *phases: tuple[str, str, str], xfail: bool = False, finish: bool = True) -> list[dict[str, object]]:
    recs: list[dict[str, object]] = [{"event": "start", "nodeid": nodeid}]
    recs += [{"event": "report", "nodeid": nodeid, "when": w, "outcome": o, "xfail": xfail, "message": m} for w, o, m in phases]
    return recs + ([{"event": "finish", "nodeid": nodeid}] if finish else [])


OK = (("setup", "passed", ""), ("call", "passed", ""), ("teardown", "passed", ""))
DIRECT = [
    *ran("tests/test_a.py::test_ok", *OK),
    *ran("tests/test_a.py::TestX::test_m[p=1]", *OK),
    *ran("tests/types/test_b.py::test_skip", ("setup", "skipped", "no hstore"), ("teardown", "passed", "")),
    *ran("tests/test_a.py::test_broken", ("setup", "passed", ""), ("call", "failed", "AssertionError: 1 != 2\nmore"), ("teardown", "passed", "")),
    *ran("tests/test_a.py::test_xf", ("setup", "passed", ""), ("call", "skipped", "expected"), ("teardown", "passed", ""), xfail=True),
    *ran("tests/test_a.py::test_gone", *OK),
]
PROXY = [
    *ran(
        "tests/test_a.py::test_ok",
        ("setup", "passed", ""),
        ("call", "failed", 'psycopg.errors.SyntaxError: syntax error at or near "foo"\nLINE 1: foo'),
        ("teardown", "failed", "boom"),
    ),
    *ran("tests/test_a.py::TestX::test_m[p=1]", ("setup", "failed", "OperationalError: 42 refused"), ("teardown", "passed", "")),
    *ran("tests/types/test_b.py::test_skip", *OK),
    *ran("tests/test_a.py::test_broken", *OK),
    *ran("tests/test_a.py::test_xf", ("setup", "passed", ""), ("call", "skipped", "expected"), ("teardown", "passed", ""), xfail=True),
    *ran("tests/test_a.py::test_gone", ("setup", "passed", ""), finish=False),
]


def test_read_progress_gives_statuses_first_lines_and_the_test_running_at_a_crash(harness: ModuleType, tmp_path: Path) -> None:
    results, running = harness.read_progress(progress(tmp_path / "d.jsonl", DIRECT))
    assert running is None
    assert {k: v.status for k, v in results.items()} == {
        "tests/test_a.py::test_ok": "passed",
        "tests/test_a.py::TestX::test_m[p=1]": "passed",
        "tests/types/test_b.py::test_skip": "skipped",
        "tests/test_a.py::test_broken": "failed",
        "tests/test_a.py::test_xf": "xfailed",
        "tests/test_a.py::test_gone": "passed",
    }
    assert results["tests/test_a.py::test_broken"].message == "AssertionError: 1 != 2"
    proxied, running = harness.read_progress(progress(tmp_path / "p.jsonl", PROXY))
    assert running == "tests/test_a.py::test_gone"
    assert proxied["tests/test_a.py::test_ok"].message == 'psycopg.errors.SyntaxError: syntax error at or near "foo" | teardown: boom'
    assert proxied["tests/test_a.py::TestX::test_m[p=1]"].status == "error"


def test_compare_lists_what_fails_only_through_dbsentry(harness: ModuleType, tmp_path: Path) -> None:
    direct, _ = harness.read_progress(progress(tmp_path / "d.jsonl", DIRECT))
    proxied, _ = harness.read_progress(progress(tmp_path / "p.jsonl", PROXY))
    proxied["tests/test_a.py::test_gone"] = harness.Outcome("tests/test_a.py::test_gone", "crashed", "died")
    recheck = {"tests/test_a.py::test_ok": harness.Outcome("tests/test_a.py::test_ok", "passed")}
    cmp = harness.compare(direct, proxied, recheck)
    assert [(e["test"], e["status"], e["recheck"]) for e in cmp.only_dbsentry] == [
        ("tests/test_a.py::TestX::test_m[p=1]", "error", "not run"),
        ("tests/test_a.py::test_gone", "crashed", "not run"),
        ("tests/test_a.py::test_ok", "failed", "passed"),
    ]
    assert [e["test"] for e in cmp.only_direct] == ["tests/test_a.py::test_broken"]
    assert cmp.direct == {"passed": 3, "failed": 1, "error": 0, "crashed": 0, "hung": 0, "skipped": 1, "xfailed": 1, "total": 6}
    report = harness.render(cmp, {"suite": "s", "version": "v", "impl": "i", "server": "15", "pytest_options": "-q", "elapsed_direct": 1.0, "elapsed_dbsentry": 2.0})
    assert "## Pass directly, fail through dbsentry: 3" in report
    assert "### 1 x setup: OperationalError: N refused" in report


CRASHING_SUITE = {
    "tests/__init__.py": "",
    "tests/test_x.py": """
import os

def test_one():
    pass

def test_crash():
    os.abort()

def test_after():
    assert False, "after the crash"

def test_last():
    pass
""",
}


def test_a_crash_is_recorded_and_the_run_resumes_after_it(harness: ModuleType, tmp_path: Path) -> None:
    suite, results = tmp_path / "suite", tmp_path / "results"
    for name, text in CRASHING_SUITE.items():
        (suite / name).parent.mkdir(parents=True, exist_ok=True)
        (suite / name).write_text(text)
    results.mkdir()
    args = harness.parse_args(["--not-markers", "", "--timeout", "60"])
    outcomes, _ = harness.run_suite("t", Path(sys.executable), args, suite, "dbname=none", {}, results, "direct")
    assert {k: v.status for k, v in outcomes.items()} == {
        "tests/test_x.py::test_one": "passed",
        "tests/test_x.py::test_crash": "crashed",
        "tests/test_x.py::test_after": "failed",
        "tests/test_x.py::test_last": "passed",
    }
    assert outcomes["tests/test_x.py::test_crash"].message == "the test process died (signal 6) during this test"
    assert (results / "direct.log").is_file() and (results / "direct-2.log").is_file()


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


def test_a_hung_test_process_is_stopped_and_the_run_resumes_after_it(harness: ModuleType, tmp_path: Path) -> None:
    suite, results = tmp_path / "suite", tmp_path / "results"
    (suite / "tests").mkdir(parents=True)
    (suite / "tests" / "__init__.py").write_text("")
    (suite / "tests" / "test_y.py").write_text("import time\n\ndef test_hang():\n    time.sleep(600)\n\ndef test_next():\n    pass\n")
    results.mkdir()
    # (a loaded machine may take seconds to start pytest: a shorter hang timeout is flaky)
    args = harness.parse_args(["--not-markers", "", "--timeout", "0", "--hang-timeout", "10"])
    outcomes, _ = harness.run_suite("t", Path(sys.executable), args, suite, "dbname=none", {}, results, "direct")
    assert {k: v.status for k, v in outcomes.items()} == {"tests/test_y.py::test_hang": "hung", "tests/test_y.py::test_next": "passed"}
    assert "in test_hang" in (results / "direct.log").read_text()  # faulthandler's stacks
