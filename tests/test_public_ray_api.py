"""The project uses only Ray's public API: no module imports a private Ray name.

Private means a module path or a name with a leading underscore (``ray._private``,
``ray.train.v2._internal``, ``ray.tune.search.sample._BackwardsCompatibleNumpyRng``), reached by
an import or by attribute access on an imported Ray module, or Tune's ``__mixins__`` hook.
Any minor Ray release may move those; this project pins a range of Ray, not its internals.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("anomaly", "ray_jobs")
HOOKS = {"__mixins__"}  # Tune internals reached by assignment rather than import


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_ray_uses(source: str) -> list[str]:
    """``line: name`` for each private Ray name the source reaches."""
    tree = ast.parse(source)
    found, ray_names = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ray":
                    ray_names.add((alias.asname or alias.name).split(".")[0])
                    if any(_private(p) for p in alias.name.split(".")):
                        found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ray":
            if any(_private(p) for p in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import …")
            for alias in node.names:
                ray_names.add(alias.asname or alias.name)
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr in HOOKS:
                found.append(f"{node.lineno}: .{node.attr}")
            root = node
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in ray_names and _private(node.attr):
                found.append(f"{node.lineno}: {root.id}….{node.attr}")
    return found


def test_the_check_finds_each_kind_of_private_use():
    snippets = [
        "from ray.tune.search.sample import _BackwardsCompatibleNumpyRng",
        "from ray.train.v2._internal.execution.callback import WorkerGroupCallback",
        "import ray.train._internal.session",
        "import ray\nray._private.worker.global_worker",
        "def f(): pass\nf.__mixins__ = ()",
    ]
    for snippet in snippets:
        assert private_ray_uses(snippet), snippet
    assert not private_ray_uses(
        "import ray\nfrom ray import tune\nray.util.remove_placement_group\nray.__version__"
    )


def test_no_module_reaches_a_private_ray_name():
    files = [path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))]
    assert len(files) > 20
    offenders = {
        str(path.relative_to(REPO)): uses for path in files if (uses := private_ray_uses(path.read_text()))
    }
    assert not offenders, offenders
