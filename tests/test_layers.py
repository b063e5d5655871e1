"""The library's layers, enforced: every quarklab module sits in one layer and imports only from its own layer or
below (imports inside functions count too), the import graph has no cycle, and no module reaches for another
module's private names. A new module fails here until it is given its layer."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import quarklab

PACKAGE = Path(quarklab.__file__).parent

LAYERS = [
    # 0 the ground: errors, the name registry, progress bars and stage marks
    ["errors", "names", "progress", "stages"],
    # 1 checks, settings (the field machinery and QuarkConfig), files, the process group
    ["checks", "knobs", "config", "files", "distributed"],
    # 2 tokens, metrics and quantiles on plain arrays; the run directory and the trackers that mirror its metrics
    ["tokens", "metrics", "quantiles", "runs", "tracking"],
    # 3 where models come from, and loading them
    ["hub", "models"],
    # 4 prompts: the TL;DR layout, the tasks (how each reads, cuts, shows and judges a prompt), prompt sources
    ["tldr", "tasks", "data"],
    # 5 the core of Quark: rewards, sampling, scoring, training (its precision and schedule), evaluation, which models each phase holds
    ["value_head_files", "reward_models", "rewards", "sampling", "vllm_backend", "scoring", "trainable", "precision", "schedule", "train",
     "evaluation", "residency"],
    # 6 the offline tiny world, above the core it is built with (it registers "tiny-tldr" in names)
    ["world", "world.build", "world.reward", "world.synth"],
    # 7 what runs Quark and what plans it; the stand-ins; where relative paths point
    ["quark", "protocols", "plan", "compare", "testing", "testing.standins", "paths"],
    # 8 reading runs: analysis, seeds, figures, the judge, exporting a checkpoint with its model card
    ["export", "analysis", "analysis.inputs", "analysis.metric_rows", "analysis.pools", "analysis.tradeoffs", "analysis.cards",
     "analysis.reward_names", "seeds", "present", "present.figures", "present.html", "present.iteration_grid",
     "present.quantile_plots", "present.run_plots", "present.seed_plots", "present.widgets",
     "judge", "judge.judges", "judge.present", "judge.systems", "judge.winrate"],
    # 9 what the notebooks' cells call, their parameters and their runner; the command line; the package's face
    ["notebooks", "notebooks.cells", "notebooks.parameters", "notebooks.runner", "cli", ""],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` of every quarklab import in ``path``, anywhere in it."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name.removeprefix("quarklab").lstrip("."), [], node.lineno) for a in node.names
                      if a.name.split(".")[0] == "quarklab"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = [p for p in package[:len(package) - node.level + 1] if p]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "quarklab":
                target = node.module.removeprefix("quarklab").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import runs` imports the module runs
                sub = f"{target}.{alias.name}".lstrip(".")
                found.append((sub, [], node.lineno) if sub in known else (target, [alias.name], node.lineno))
    return found


def graph() -> tuple[dict[str, set[str]], list[str]]:
    known = modules()
    edges, private = {}, []
    for name, path in known.items():
        edges[name] = set()
        for target, names, line in imports(name, path, known):
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            assert target in known, f"{path}:{line} imports quarklab.{target}, which does not exist"
            if target != name:
                edges[name].add(target)
                where = f"quarklab.{target}" if target else "quarklab"
                private += [f"quarklab.{name} (line {line}) imports {n} from {where}" for n in names
                            if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]  # not dunders
    return edges, private


def test_every_module_has_a_layer():
    missing = sorted(set(modules()) - set(LAYER))
    assert not missing, f"give these modules a layer in LAYERS: {missing}"
    gone = sorted(set(LAYER) - set(modules()))
    assert not gone, f"LAYERS names modules that no longer exist: {gone}"


def test_no_module_imports_from_a_layer_above_its_own():
    edges, _ = graph()
    upward = [f"quarklab.{a or '__init__'} (layer {LAYER[a]}) imports quarklab.{b} (layer {LAYER[b]})"
              for a in sorted(edges) for b in sorted(edges[a]) if a in LAYER and b in LAYER and LAYER[b] > LAYER[a]]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    edges, _ = graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_name_crosses_a_module():
    _, private = graph()
    assert not private, "\n".join(private)


def test_the_library_never_edits_the_import_path():
    edits = [f"{p}:{n}" for p in sorted(PACKAGE.rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if "sys.path" in line]
    assert not edits, f"quarklab must not change sys.path: {edits}"


def test_the_layer_checks_catch_what_they_claim(tmp_path, monkeypatch):
    """The checks fail on a planted upward import, a cycle and a private import (not only pass on this tree)."""
    fake = tmp_path / "quarklab"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "errors.py").write_text("from .config import _hidden\n")  # upward, private, and a cycle
    (fake / "config.py").write_text("def f():\n    from . import errors\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    edges, private = graph()
    assert edges["errors"] == {"config"} and edges["config"] == {"errors"}
    assert private == ["quarklab.errors (line 1) imports _hidden from quarklab.config"]
    for check in (test_no_module_imports_from_a_layer_above_its_own, test_the_import_graph_has_no_cycle):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} passed on a planted fault")


def test_every_module_has_a_test_file_named_after_it():
    """quarklab/a/b.py is tested in tests/test_b.py, test_a_b.py or (for a subpackage) test_a.py."""
    tests = {p.stem for p in Path(__file__).parent.glob("test_*.py")}
    missing = []
    for name, path in modules().items():
        if not name or path.name == "__init__.py":
            continue
        parts = name.split(".")
        candidates = {f"test_{parts[-1]}"} | ({f"test_{parts[0]}_{parts[-1]}", f"test_{parts[0]}"}
                                              if len(parts) > 1 else set())
        if not candidates & tests:
            missing.append(f"quarklab.{name} (write {sorted(candidates)[0]}.py)")
    assert not missing, "modules without a test file named after them:\n" + "\n".join(missing)
