"""The package layout: `platform/` never shadows the standard library; imports flow one way."""

import ast
import os
import subprocess
import sys

from conftest import REPO


def test_python_from_repo_root_imports_torch_ray_and_sama():
    code = "import platform, torch, ray, sama, sama.config; print(platform.__file__); platform.system()"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert not out.stdout.strip().startswith(os.path.join(REPO, "platform"))


def test_platform_folder_is_not_a_regular_package():
    assert not os.path.exists(os.path.join(REPO, "platform", "__init__.py"))


def _imports(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for d, _, files in os.walk(os.path.join(REPO, folder)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                names = set()
                for node in ast.walk(ast.parse(open(path).read(), path)):
                    if isinstance(node, ast.Import):
                        names.update(a.name for a in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                        names.add(node.module)
                found[os.path.relpath(path, REPO)] = names
    return found


def _offenders(folder: str, banned: tuple[str, ...]) -> list[str]:
    return [f"{p}: {n}" for p, names in _imports(folder).items() for n in names if n.startswith(banned)]


def test_core_imports_no_job_pipeline_or_server():
    assert _offenders("platform", ("sama.pipelines", "sama.serve", "sama.jobs")) == []


def test_pipelines_and_serve_do_not_import_each_other():
    assert _offenders("pipelines", ("sama.serve", "sama.jobs")) == []
    assert _offenders("serve", ("sama.pipelines", "sama.jobs")) == []


ROOTS = {"platform": "sama", "pipelines": "sama.pipelines", "serve": "sama.serve", "jobs": "sama.jobs"}


def _module_files() -> dict[str, str]:
    """Import name -> file, for every module of the package."""
    out = {}
    for folder, prefix in ROOTS.items():
        for d, _, files in os.walk(os.path.join(REPO, folder)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, f), os.path.join(REPO, folder))[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    out[".".join([prefix, *rel]).rstrip(".")] = os.path.join(d, f)
    return out


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any depth (function-level imports too)."""
    files = _module_files()
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                while t and t not in files:  # `from x import name`: the module x, or x.name if a module
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != mod:
                    edges.add(t)
        graph[mod] = edges
    return graph


def test_no_job_imports_another_job():
    """Code two jobs need lives in the core (sama.*) or the stage runner, never in a sibling job."""
    jobs = {m.split(".")[2] for m in _module_files() if m.startswith("sama.pipelines.") and m.count(".") >= 3}
    offenders = []
    for mod, edges in _import_graph().items():
        if mod.startswith("sama.pipelines.") and mod.count(".") >= 3:
            own = mod.split(".")[2]
            offenders += [
                f"{mod} -> {t}" for t in edges if t.startswith("sama.pipelines.") and t.split(".")[2] in jobs - {own}
            ]
    assert offenders == []


def test_no_import_cycles():
    graph = _import_graph()
    cycles, state = [], {}

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = "open"
        for nxt in sorted(graph.get(mod, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[mod] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert cycles == []


def test_every_registered_job_declares_its_entry():
    from sama.config import JobEntry
    from sama.jobs.registry import JOBS

    for spec in JOBS.values():
        entry = spec.load()
        assert isinstance(entry, JobEntry) and entry.config().job == spec.name, spec.name
