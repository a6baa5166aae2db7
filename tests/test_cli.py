"""fnet_tf.core.cli: the helpers every command shares, and the rule that keeps their flags apart."""
import ast
import glob
import os

import pytest

from fnet_tf.core.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_levels():
    from fnet_tf.arch.flags import parse_levels

    assert parse_levels("0-2,7", 7) == [0, 1, 2, 7]
    assert parse_levels(" 3 , 1 ", 7) == [1, 3]
    assert parse_levels("all", 3) == [0, 1, 2, 3]
    # a part with dots is one per-stage design; it follows the levels, duplicates dropped
    assert parse_levels("0.0.7, 3, 0.0.7, 5.03.7", 7) == [3, "0.0.7", "5.3.7"]
    for text, message in [("0-9", "outside 0..7"), ("a", "bad --levels part"),
                          (None, "--levels is required"), ("3-1", "outside"),
                          ("0.9.7", "every stage's level must be in 0..7"),
                          ("0.x.7", "one level per stage joined by dots"),
                          ("0..7", "one level per stage joined by dots")]:
        with pytest.raises(UserError, match=message):
            parse_levels(text, 7)


def _defines_flags_on_import(path):
    """Whether a module registers absl flags at import (a command's module)."""
    tree = ast.parse(open(path).read())
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            owner = getattr(call.func.value, "id", "")
            if (owner, call.func.attr[:7]) in (("flags", "DEFINE_"), ("cli", "define_")) or (
                    owner == "flags" and call.func.attr == "DEFINE"):
                return True
    return False


def _imported_modules(path):
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_tests_import_no_command_module_in_process():
    """Two commands may both define --data: imported into one pytest process they clash
    (DuplicateFlagError, and only in the order CI happens to run the files). Tests run
    commands in a subprocess and import the library code they test."""
    commands = set()
    for path in glob.glob(os.path.join(ROOT, "fnet_tf", "**", "*.py"), recursive=True):
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        if module != "fnet_tf.core.cli" and _defines_flags_on_import(path):
            commands.add(module)
    assert {"fnet_tf.analyze", "fnet_tf.sweep", "fnet_tf.train"} <= commands  # the scan works
    offenders = {os.path.basename(path): sorted(_imported_modules(path) & commands)
                 for path in glob.glob(os.path.join(ROOT, "tests", "*.py"))}
    assert not {k: v for k, v in offenders.items() if v}
