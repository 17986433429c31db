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
