"""mucode.code_digest: which modules a stage's code digest covers, what changes it, and (slow) that
a stage under Prefect recomputes when code it imports changes, on a copy of the package tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import polars as pl
import pytest

from mucode.artifacts import ArtifactStore
from mucode.code_digest import (COMPUTED_IMPORTS, PROJECT_PACKAGES, WHOLE_PROJECT, computed_import_modules,
                                parsed_module, project_modules, run_as_stage, stage_code)
from prefect_support import REPO



def test_stage_code_follows_imports_lazy_imports_and_import_paths():
    problems = stage_code("mucode.tasks.problems").modules
    # problems_stage imports mucode.data inside the function; mucode.data.mbpp is two imports further.
    assert {"mucode.tasks.problems", "mucode.tasks", "mucode", "mucode.orchestration", "mucode.data",
            "mucode.data.loader", "mucode.data.mbpp", "mucode.data.splits"} <= set(problems)
    assert "mucode.tasks.evaluate" not in problems and "mucode.engines.hf" not in problems
    relabel = stage_code("mucode.tasks.relabel").modules
    assert "mucode.prompts" in relabel
    rollout = stage_code("mucode.tasks.rollout").modules
    # Reached only inside make_engine (a lazy import): the server engine behind sglang.
    assert "mucode.engines.server" in rollout
    # The host imports two worker modules; the worker runs as a program, so all of it counts.
    worker = {name for name in project_modules() if name.startswith("mucode.sandbox.worker")}
    assert len(worker) > 10 and worker <= set(stage_code("mucode.tasks.execute").modules)


def test_code_digests_differ_by_stage_and_are_computed_once():
    assert stage_code("mucode.tasks.problems").digest != stage_code("mucode.tasks.execute").digest
    assert stage_code("mucode.tasks.problems") is stage_code("mucode.tasks.problems")


def test_tree_hash_ignores_comments_and_layout_but_not_logic_or_docstrings(tmp_path):
    def tree_hash(name: str, source: str) -> str:
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        return parsed_module(name, path)[0]

    original = tree_hash("a", '"""Doc."""\ndef f(x):\n    return x + 1\n')
    assert tree_hash("b", '"""Doc."""\n# why\ndef f( x ):\n\n    return x + 1  # note\n') == original
    assert tree_hash("c", '"""Doc."""\ndef f(x):\n    return x + 2\n') != original
    assert tree_hash("d", '"""Other doc."""\ndef f(x):\n    return x + 1\n') != original


def test_relative_and_string_imports_resolve_to_project_modules(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("from . import confine\nfrom .limits import Limits\nfrom .. import errors\n"
                    "def later():\n    import mucode.prompts\n"
                    "BACKEND = 'mucode.engines.hf:HFEngine'\nNOTE = 'mucode.metrics is not an import'\n")
    _, reached, computed = parsed_module("mucode.sandbox.worker.mod", path)
    assert reached == {"mucode", "mucode.sandbox", "mucode.sandbox.errors", "mucode.sandbox.worker",
                       "mucode.sandbox.worker.confine", "mucode.sandbox.worker.limits", "mucode.prompts",
                       "mucode.engines", "mucode.engines.hf"}
    assert not computed


def test_every_computed_import_is_reviewed():
    # A new `import_module(name)` with a computed name hides a dependency from the walk: review it,
    # then list it in COMPUTED_IMPORTS with the reason the digest stays complete.
    assert computed_import_modules() == set(COMPUTED_IMPORTS)


def test_project_packages_cover_pyproject_and_every_subpackage():
    # Both ways: a package a wheel leaves out (as the sandbox worker once was) breaks installs.
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert set(declared) == set(PROJECT_PACKAGES)
    directories = {Path(path).parent for name, path in project_modules().items() if name in PROJECT_PACKAGES}
    nested = {init.parent for directory in directories for init in directory.glob("*/__init__.py")}
    assert nested <= directories, f"a package missing from PROJECT_PACKAGES: {sorted(nested - directories)}"


def write_one_frame(cfg, root: str):
    return ArtifactStore(root).put_frame(pl.DataFrame({"x": [1]}), stage="one")


def test_manifest_names_the_code_of_the_stage_that_wrote_it(tmp_path):
    store = ArtifactStore(tmp_path / "a")
    inside = store.manifest(run_as_stage(write_one_frame, None, str(tmp_path / "a")))["code"]
    assert inside == stage_code(__name__).manifest_entry()
    assert inside["scope"] == __name__ and {"mucode.artifacts", "mucode.code_digest"} <= set(inside["modules"])
    outside = ArtifactStore(tmp_path / "b").manifest(write_one_frame(None, str(tmp_path / "b")))["code"]
    assert outside["scope"] == WHOLE_PROJECT and set(outside["modules"]) == set(project_modules())


# -- a real stage under Prefect, on an edited copy of the package tree --------------------------

RUN_PROBLEMS = """
import json, sys
import mucode
from prefect import flow
from mucode.artifacts import ArtifactStore
from mucode.orchestration import experiment_root
from mucode.tasks.problems import problems_task
from prefect_support import make_config


@flow
def run(run_dir):
    cfg = make_config(run_dir, {"data": {"data_dir": sys.argv[2]}})
    root = experiment_root(cfg)
    state = problems_task(cfg, root, dataset="mbpp", split="test", limit=2, return_state=True)
    store = ArtifactStore(root)
    frame = store.get_frame(state.result())
    return {"state": state.name, "code": store.manifest(state.result())["code"], "imported": mucode.__file__,
            "public_asserts": frame["public_tests"].str.count_matches("assert ").to_list()}


print("RESULT " + json.dumps(run(sys.argv[1])))
"""


def installed_tree(destination: Path) -> Path:
    """A copy of the project's packages laid out as a wheel installs them (tasks/ etc. inside mucode/)."""
    for package in PROJECT_PACKAGES:
        if package == "mucode.sandbox.worker":
            continue  # copied with mucode.sandbox
        source = project_modules()[package].parent
        target = destination.joinpath(*package.split("."))
        if not target.exists():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def run_problems_stage(tree: Path, run_dir: Path, data_dir: Path, results: Path) -> dict:
    """The problems stage in a fresh process that imports mucode from `tree`."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(REPO / "tests")]),
           "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOCAL_STORAGE_PATH": str(results)}
    done = subprocess.run([sys.executable, "-c", RUN_PROBLEMS, str(run_dir), str(data_dir)], env=env, cwd=tree,
                          capture_output=True, text=True, timeout=300)  # cwd: `-c` puts it first on sys.path
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and result, done.stderr[-3000:]
    return json.loads(result[0].removeprefix("RESULT "))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new))


@pytest.mark.slow
def test_stage_recomputes_when_an_imported_module_changes(prefect_harness, tmp_path, data_dir):
    tree = installed_tree(tmp_path / "tree")
    mbpp = tree / "mucode" / "data" / "mbpp.py"  # problems -> (lazy) mucode.data -> loader -> mbpp
    shown = "    shown = asserts if is_training_split(split) else asserts[:1]\n"
    run = lambda: run_problems_stage(tree, tmp_path / "runs", data_dir, prefect_harness)  # noqa: E731

    first = run()
    assert Path(first["imported"]).is_relative_to(tree)
    assert first["state"] == "Completed" and first["public_asserts"] == [1, 1]
    assert run()["state"] == "Cached"
    edit(mbpp, shown, "    # The evaluation splits show one assert, as in the paper.\n" + shown)
    assert run()["state"] == "Cached"  # the syntax tree did not change
    edit(mbpp, "asserts[:1]", "asserts[:2]")
    logic = run()
    assert logic["state"] == "Completed" and logic["public_asserts"] == [2, 2]  # not the stale cached frame
    assert first["code"]["scope"] == "mucode.tasks.problems" and "mucode.data.mbpp" in first["code"]["modules"]
    assert logic["code"]["digest"] != first["code"]["digest"]
