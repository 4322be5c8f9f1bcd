"""Loading a policy file: YAML -> validated model -> compiled :class:`Policy`.

Errors carry the file, the line (from the YAML node marks) and the reason, so that
``dbsentry policy check`` can print ``file:line: reason``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dbsentry.policy.baseline import baseline_rule_names, compiled_baseline
from dbsentry.policy.engine import Policy, compile_rule
from dbsentry.policy.model import PolicyFile
from dbsentry.policy.yamlsafe import YAMLLimitError, compose_bounded


class PolicyError(Exception):
    """The policy file is invalid."""

    def __init__(self, file: str, line: int | None, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}" if line else f"{file}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


Path_ = tuple[str | int, ...]


def _marks(node: yaml.Node, path: Path_, out: dict[Path_, int]) -> None:
    """Line numbers of every key and list item (a key's line, not its value's)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, key.value if isinstance(key, yaml.ScalarNode) else str(key.value))
            out[child] = key.start_mark.line + 1
            _marks(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            out[child] = item.start_mark.line + 1
            _marks(item, child, out)


def _line(marks: dict[Path_, int], loc: tuple[Any, ...]) -> int | None:
    path: Path_ = tuple(p for p in loc if isinstance(p, (str, int)))
    while path:
        if path in marks:
            return marks[path]
        path = path[:-1]
    return marks.get(())


def parse_policy(text: str, source: str = "<string>") -> Policy:
    """A policy from YAML text; ``source`` names it in errors."""
    content = text.encode()
    try:
        node, data = compose_bounded(text)
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark is not None else None
        what = "refused" if isinstance(err, YAMLLimitError) else "not valid YAML"
        raise PolicyError(source, line, f"{what}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise PolicyError(source, None, f"not valid YAML: {err}") from None
    marks: dict[Path_, int] = {}
    if node is not None:
        marks[()] = node.start_mark.line + 1
        _marks(node, (), marks)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(source, marks.get(()), "the policy must be a mapping")
    try:
        model = PolicyFile.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(first["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        reason = f"{where}: {first['msg'].removeprefix('Value error, ')}"
        if len(err.errors()) > 1:
            reason += f" (and {len(err.errors()) - 1} more)"
        raise PolicyError(source, _line(marks, loc), reason) from None
    known = set(baseline_rule_names())
    for i, name in enumerate(model.baseline.disable):
        if name not in known:
            raise PolicyError(
                source,
                _line(marks, ("baseline", "disable", i)),
                f"baseline.disable: no baseline rule named {name!r}",
            )
    rules = [
        *compiled_baseline(model.baseline, model.production_environments),
        *(compile_rule(r) for r in model.rules),
    ]
    return Policy.build(
        rules,
        default=model.default,
        content=content,
        source=source,
        production_environments=model.production_environments,
        environments=model.environments,
        allowed_settings=model.baseline.allow_settings,
        safe_functions=model.baseline.safe_functions,
    )


def load_policy(path: str | os.PathLike[str]) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyError(str(p), None, f"cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(str(p), None, "not UTF-8 text") from None
    return parse_policy(text, str(p))


def default_policy() -> Policy:
    """The baseline alone: what runs when the configuration names no policy file."""
    return parse_policy("", "<baseline>")


def declared_environments(policy: Policy) -> frozenset[str]:
    """Environment names a policy declares: its production ones and ``environments``."""
    return policy.production_environments | policy.environments
