"""The package's layers, read from its imports: each layer imports only the layers below it.

    cli                                   (the command line)
    pipeline                              (experiment config, train, evaluate, methods, checkpoints, runs)
    model · data · allocation · search    (side by side: none imports another)
    core · storage                        (space, quantizer, Pareto fronts · files every node reaches)
    errors · io                           (the foundation: error classes, atomic writes, cache root)

``coalora`` never imports Ray or ``orchestration`` (Ray lives there).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "coalora"

# module prefix -> (layer height, name); a module may import only from strictly lower layers, or from itself.
LAYERS: dict[str, int] = {
    "coalora.errors": 0,
    "coalora.io": 1,
    "coalora.storage": 2,  # its local writes are io's atomic writes
    "coalora.core": 2,
    "coalora.model": 3,
    "coalora.data": 3,
    "coalora.allocation": 3,
    "coalora.search": 3,
    "coalora.pipeline": 4,
    "coalora.cli": 5,
}
FORBIDDEN = ("ray", "orchestration")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _unit(module: str) -> str | None:
    """The layer unit a module belongs to (``coalora.core.space`` -> ``coalora.core``)."""
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in the file, at any depth (lazy imports count too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "coalora":  # ``from coalora import io``: the named submodules
                out += [(node.lineno, f"coalora.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    missing = [_module_name(p) for p in MODULES if _module_name(p) != "coalora" and _unit(_module_name(p)) is None]
    assert missing == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_only_lower_layers(path: Path) -> None:
    me = _module_name(path)
    unit = _unit(me)
    wrong = []
    for line, target in _imports(path):
        top = target.split(".")[0]
        if top in FORBIDDEN:
            wrong.append(f"line {line}: {target} (coalora never imports {top})")
        if top != "coalora" or target == "coalora" or unit is None:
            continue
        other = _unit(target)
        if other is None or other == unit:
            continue
        if LAYERS[other] >= LAYERS[unit]:
            wrong.append(f"line {line}: {target} (layer {LAYERS[other]}) from {unit} (layer {LAYERS[unit]})")
    assert wrong == [], f"{me} imports upward or sideways:\n" + "\n".join(wrong)


def test_the_layering_test_sees_a_violation(tmp_path: Path) -> None:
    """The reader finds lazy imports inside functions, which is how an upward import would hide."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from coalora.pipeline.config import load_config\n    import ray\n")
    assert _imports(f) == [(2, "coalora.pipeline.config"), (3, "ray")]
