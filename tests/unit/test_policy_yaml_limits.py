"""Hostile policy YAML is refused quickly and in little memory: alias bombs, deep nesting,
too many aliases; through the loader, a reload, ``dbsentry policy check`` and the fuzzer."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.policy import PolicyError, parse_policy
from dbsentry.policy.cli import policy
from dbsentry.policy.yamlsafe import MAX_ALIASES, MAX_DEPTH, MAX_NODES, load_bounded

GOOD = """
version: 1
rules:
  - name: no-drop
    match: &prod {environments: [production], commands: [DROP TABLE]}
    action: deny
  - name: no-truncate
    match: {<<: *prod, commands: [TRUNCATE]}
    action: deny
"""


def alias_bomb(levels: int) -> str:
    """``levels`` of doubling aliases: 2**levels leaves in a few hundred bytes."""
    lines = ["a0: &a0 [x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, levels + 1)]
    return "version: 1\n" + "\n".join(lines) + "\nrules: []\n"


@contextmanager
def bounded(cpu_seconds: float = 2.0, megabytes: float = 64) -> Iterator[None]:
    """CPU time and peak Python allocations of the block (not wall time: CI is loaded)."""
    tracemalloc.start()
    cpu = time.process_time()
    try:
        yield
    finally:
        used = time.process_time() - cpu
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert used < cpu_seconds, f"{used:.2f} s of CPU"
    assert peak < megabytes * 1024 * 1024, f"{peak / 1e6:.1f} MB allocated"


def test_anchors_within_limits_still_work() -> None:
    pol = parse_policy(GOOD, "policy.yaml")
    assert [cr.rule.name for cr in pol.rules if not cr.baseline] == ["no-drop", "no-truncate"]


@pytest.mark.serial
@pytest.mark.parametrize("levels", [20, 24, 40])
def test_alias_bomb_refused_naming_the_limit(levels: int) -> None:
    text = alias_bomb(levels)
    assert len(text) < 1000
    with bounded(), pytest.raises(PolicyError) as err:
        parse_policy(text, "bomb.yaml")
    assert f"more than {MAX_NODES} nodes" in err.value.reason
    assert err.value.reason.startswith("refused:")
    assert err.value.line is not None and err.value.line <= levels + 2


@pytest.mark.serial
def test_deep_nesting_refused() -> None:
    with bounded(), pytest.raises(PolicyError) as err:
        parse_policy("rules: " + "[" * 200_000, "deep.yaml")
    assert f"deeper than {MAX_DEPTH} levels" in err.value.reason


@pytest.mark.parametrize(
    "text",
    ["rules: &x [*x]", "&x {a: *x}", "baseline: &x\n  disable: *x", "rules:\n  - &x\n    match: [*x]"],
    ids=["list", "mapping", "nested mapping", "inside a rule"],
)
def test_an_alias_inside_the_node_it_names_is_refused(text: str) -> None:
    """A cycle: anything that walked it would recurse forever (a RecursionError before)."""
    with pytest.raises(PolicyError, match=r"refused: a YAML alias \(\*x\) inside the node it names"):
        parse_policy(text)
    with pytest.raises(Exception, match="inside the node it names"):
        load_bounded(text)


@pytest.mark.serial
def test_too_many_aliases_refused() -> None:
    text = "x: &x 1\nys: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "many.yaml")
    assert f"more than {MAX_ALIASES} YAML aliases" in err.value.reason
    # one fewer is only a validation question, not a limit
    ok = "x: &x 1\nys: [" + ", ".join(["*x"] * MAX_ALIASES) + "]\n"
    assert load_bounded(ok)["ys"] == [1] * MAX_ALIASES


@pytest.mark.serial
def test_reload_keeps_the_policy_in_force(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    gov = Governor.from_path(path)
    before = gov.version
    path.write_text(alias_bomb(30))
    with bounded():
        assert gov.reload() is False
    assert gov.version == before


@pytest.mark.serial
def test_policy_check_cli_refuses_a_bomb(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(alias_bomb(30))
    cfg = tmp_path / "dbsentry.yaml"
    cfg.write_text(
        "connections:\n  prod: {database: app, user: app, environment: production}\n"
        "policy: policy.yaml\n"
    )
    with bounded():
        result = CliRunner().invoke(policy, ["check", "-c", str(cfg)])
    assert result.exit_code == 1
    assert "policy.yaml:" in result.output and f"more than {MAX_NODES} nodes" in result.output


@pytest.mark.serial
def test_policy_test_cases_file_is_bounded_too(tmp_path: Path) -> None:
    (tmp_path / "cases.yaml").write_text(alias_bomb(30))
    cfg = tmp_path / "dbsentry.yaml"
    cfg.write_text("connections:\n  prod: {database: app, user: app}\n")
    with bounded():
        result = CliRunner().invoke(policy, ["test", "-c", str(cfg), str(tmp_path / "cases.yaml")])
    assert result.exit_code != 0
    assert "cannot load cases" in result.output and "(the limit)" in result.output


# --- fuzz: any text, and structures built to blow up, stay within a time and memory bound ---

_scalar = st.sampled_from(["x", "1", "deny", "{}", "[]", "~", "'a'", "*a0", "&a0 y"])


@st.composite
def hostile_yaml(draw: st.DrawFn) -> str:
    lines = []
    anchors: list[str] = []
    for i in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["alias-list", "alias-map", "nest", "scalar", "merge"]))
        name = f"a{i}"
        refs = [f"*{draw(st.sampled_from(anchors))}" for _ in range(3)] if anchors else ["x"]
        if kind == "alias-list":
            lines.append(f"{name}: &{name} [{', '.join(refs * draw(st.integers(1, 4)))}]")
        elif kind == "alias-map":
            body = ", ".join(f"k{j}: {r}" for j, r in enumerate(refs))
            lines.append(f"{name}: &{name} {{{body}}}")
        elif kind == "merge" and anchors:
            lines.append(f"{name}: &{name} {{<<: {refs[0]}, z: 1}}")
        elif kind == "nest":
            depth = draw(st.integers(1, 300))
            lines.append(f"{name}: &{name} " + "[" * depth + draw(_scalar) + "]" * depth)
        else:
            lines.append(f"{name}: &{name} {draw(_scalar)}")
        anchors.append(name)
    lines.append("rules: " + draw(st.sampled_from(["[]", "*a0", "[{name: r, action: deny}]"])))
    return "\n".join(lines) + "\n"


@pytest.mark.serial
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_yaml())
def test_fuzz_structured_hostile_yaml(text: str) -> None:
    with bounded(cpu_seconds=2.0, megabytes=64), suppress(PolicyError):
        parse_policy(text, "fuzz.yaml")


@pytest.mark.serial
@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("&*ab[]{}:,- \n'\"!|>#<")), max_size=400))
def test_fuzz_any_text(text: str) -> None:
    with bounded(cpu_seconds=2.0, megabytes=64), suppress(PolicyError):
        parse_policy(text, "fuzz.yaml")
