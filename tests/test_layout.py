"""The package's layout rules (issue 38), read from the source with ``ast``.

A module directly under ``fnet_tf/`` is a command; everything else lives in a subpackage on a
floor and imports only from its own floor or below. Also: no import cycles, nothing imports a
command, a library module imports ``fnet_tf`` at its top (never inside a function), only the
heavy libraries load late, registries live in their own modules, and no private name crosses a
module boundary. ``python tests/test_layout.py`` prints every violation.
"""
import ast
import os
import subprocess
import sys

from conftest import run_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "fnet_tf")

FLOORS = {"core": 0, "arch": 1, "data": 1, "quantization": 2, "run": 3, "tflite": 3,
          "training": 4, "analysis": 5, "release": 6, "search": 7}
DEVICE = "device"  # single files for the board: import nothing from fnet_tf, anyone imports them
COMMANDS = {"train", "to_tflite", "analyze", "sweep", "tune", "zoo", "models", "keras3_float"}
# loaded late on purpose, inside the function that needs them
HEAVY = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "tensorflow_datasets",
         "matplotlib", "keras", "ray", "jax", "optuna")
# the library modules that load TensorFlow when imported (each defines Keras classes at its
# top); every other library module imports without loading it
LOADS_TENSORFLOW = {"fnet_tf.analysis.callback", "fnet_tf.training.lookahead",
                    "fnet_tf.training.loop"}
# a heavy library a module may import at its top: it is the module's whole job
HEAVY_AT_TOP = {"fnet_tf.analysis.plots": "matplotlib"}


def modules(root=PACKAGE):
    """{dotted name: path} of every module of the package."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], os.path.dirname(root)).replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def role(module):
    """'command', 'device', 'package' (fnet_tf itself) or the subpackage's name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if len(parts) == 2 and parts[1] in COMMANDS:
        return "command"
    return parts[1]


def imports(path, known):
    """[(module imported, line, inside a function, names)] of ``fnet_tf`` imports."""
    tree = ast.parse(open(path).read())
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "fnet_tf":
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                found.append((target if target in known else node.module, node.lineno,
                              id(node) in inside, alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fnet_tf":
                    found.append((alias.name, node.lineno, id(node) in inside, None))
    return found


def heavy_imports_at_top(path):
    tree = ast.parse(open(path).read())
    bad = []
    for node in tree.body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        bad += [(n, node.lineno) for n in names if n.split(".")[0] in HEAVY]
    return bad


def graph(known):
    return {m: sorted({t for t, _, _, _ in imports(p, known) if t != m and t in known})
            for m, p in known.items()}


def cycles(edges):
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def violations(root=PACKAGE):
    """Every broken rule, one line each (empty when the layout holds)."""
    known = modules(root)
    problems = []
    for module, path in sorted(known.items()):
        mine = role(module)
        rel = os.path.relpath(path, os.path.dirname(root))
        for target, line, in_function, name in imports(path, known):
            where = f"{rel}:{line}"
            theirs = role(target)
            if mine == DEVICE:
                problems.append(f"{where}: a device file imports {target} (it must stand alone)")
                continue
            if theirs == "command":
                problems.append(f"{where}: imports the command {target}")
            if mine not in ("command", "package") and in_function:
                problems.append(f"{where}: imports {target} inside a function (move it to "
                                f"the top of the file)")
            if mine in FLOORS and theirs in FLOORS and FLOORS[theirs] > FLOORS[mine]:
                problems.append(f"{where}: {mine}/ (floor {FLOORS[mine]}) imports {target} "
                                f"({theirs}/, floor {FLOORS[theirs]}): an upward import")
            if name and name.startswith("_") and not name.startswith("__"):
                problems.append(f"{where}: imports the private name {name} from {target}")
        if mine not in ("command", "package", DEVICE):
            for lib, line in heavy_imports_at_top(path):
                if HEAVY_AT_TOP.get(module) != lib.split(".")[0]:
                    problems.append(f"{rel}:{line}: imports {lib} at the top (a heavy library "
                                    f"is imported inside the function that needs it)")
        if module.endswith("__init__") or path.endswith("__init__.py"):
            tree = ast.parse(open(path).read())
            if any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body) and \
                    module != "fnet_tf":
                problems.append(f"{rel}: a package __init__ defines code (registries and "
                                f"functions live in their own modules)")
    for component in cycles(graph(known)):
        problems.append("import cycle: " + " -> ".join(component))
    return problems


def test_the_layout_holds():
    problems = violations()
    assert not problems, "\n".join(problems)


def test_the_rules_catch_an_upward_import_and_a_cycle(tmp_path):
    """The checker itself: a copy of the package with an upward import and a cycle added."""
    import shutil

    copy = tmp_path / "fnet_tf"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.npz",
                                                                 "*.tflite"))
    errors = copy / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom fnet_tf.arch import spec  # noqa\n")
    spec = copy / "arch" / "spec.py"
    spec.write_text(spec.read_text() + "\nfrom fnet_tf.core import errors  # noqa\n")
    found = violations(str(copy))
    assert any("upward import" in p and "core/errors.py" in p for p in found), found
    assert any(p.startswith("import cycle") and "fnet_tf.core.errors" in p for p in found), found


def test_importing_a_library_module_does_not_load_tensorflow():
    """Commands answer a bad flag in a second: no library module but the few that define
    Keras classes at their top loads TensorFlow when imported."""
    known = [m for m in modules() if role(m) not in ("command", "package")
             and not m.endswith(".__init__")]
    light = sorted(m for m in known if m not in LOADS_TENSORFLOW)
    # one fresh interpreter imports every light module (pytest's own imports do not count);
    # only when TensorFlow shows up does a fresh interpreter per module name the culprit
    together = _loads_tensorflow(light)
    culprits = [m for m in light if _loads_tensorflow([m])] if together else []
    assert not together, f"importing these loads TensorFlow: {culprits}"
    known = modules()
    for module in sorted(LOADS_TENSORFLOW):  # the listed ones still must (else drop them)
        assert _defines_keras_class_at_top(known[module]), \
            f"{module} no longer defines a Keras class at its top: drop it from LOADS_TENSORFLOW"


def _defines_keras_class_at_top(path):
    """Whether a module-level class derives from ``keras.X``/``tf.X`` (TensorFlow at import)."""
    def root(node):
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    tree = ast.parse(open(path).read())
    return any(isinstance(node, ast.ClassDef) and any(root(b) in ("keras", "tf")
                                                      for b in node.bases)
               for node in tree.body)


def _loads_tensorflow(names):
    """Whether importing ``names`` in one fresh interpreter loads TensorFlow."""
    probe = ("import importlib, sys\n"
             f"for name in {list(names)!r}:\n"
             "    importlib.import_module(name)\n"
             "print('tensorflow' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip() == "True"


def test_a_run_directory_written_before_the_move_still_works(tiny_archive, tmp_path):
    """tests/fixtures/run-before-layout: a QAT run made by the flat layout (commit 7d7c4b1:
    factorizenet level 5 width 0.25, 1 float + 1 QAT epoch on 40 tiny images; checkpoints
    left out). Its Keras files, QAT weights and records load and export with today's code."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(os.path.join(REPO, "tests", "fixtures", "run-before-layout"), run_dir)
    out = tmp_path / "again_int8.tflite"
    exported = run_module(["-m", "fnet_tf.to_tflite", str(run_dir), "--data", tiny_archive,
                           "--out", str(out), "--check_images", "20", "--float32"])
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "scheme int8" in exported.stdout and out.exists()  # the QAT model, rebuilt
    analyzed = run_module(["-m", "fnet_tf.analyze", str(run_dir), "--data", tiny_archive,
                           "--out", str(tmp_path / "a"), "--limit", "20", "--latency_runs", "5"])
    assert analyzed.returncode == 0, analyzed.stderr[-2000:]
    assert (tmp_path / "a" / "metrics.json").exists()


if __name__ == "__main__":
    print("\n".join(violations()) or "the layout holds")
