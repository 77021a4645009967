"""The code a stage runs, as part of its fingerprint.

A stage's version is reused only when its inputs, its parameters and its
code are unchanged. Its code is the source of its entry module and of every
``pipeline`` module that module imports, transitively (found by reading the
imports, inside functions too): editing a walk kernel rebuilds the sampling
stages and so everything after them, while editing the report rebuilds only
the evaluation. A package counts as its ``__init__`` plus what that imports.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import zipfile
from pathlib import Path, PurePosixPath

PACKAGE = Path(__file__).resolve().parent.parent


def module_files(root: Path = PACKAGE) -> dict[str, Path | zipfile.Path]:
    """Module name -> source file for every module under ``root``: a package directory, or
    a package inside a zip archive (as ``spark-submit --py-files`` ships it to the driver)."""
    archive = next((p for p in [root, *root.parents] if p.suffix == ".zip" and p.is_file()), None)
    if archive is not None:
        inner = root.relative_to(archive).as_posix()
        found = [(PurePosixPath(n), zipfile.Path(archive, n))
                 for n in zipfile.ZipFile(archive).namelist()
                 if n.startswith(inner + "/") and n.endswith(".py")]
        base = PurePosixPath(inner).parent
    else:
        found, base = [(p, p) for p in root.rglob("*.py")], root.parent
    files = {}
    for name, path in found:
        parts = name.relative_to(base).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_modules(source: str, files: dict[str, Path]) -> set[str]:
    """The modules of ``files`` that ``source`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in files else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & set(files)


def closure(module: str, files: dict[str, Path]) -> set[str]:
    """``module`` and every module of ``files`` it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported_modules(files[name].read_text(), files) - seen)
    return seen


@functools.lru_cache(maxsize=None)
def code_version(module: str, root: str = str(PACKAGE), *, imports: bool = True) -> str:
    """A hash of the source of ``module`` and of everything it imports from ``root``
    (``imports=False``: of its own source only)."""
    files = module_files(Path(root))
    if module not in files:
        raise KeyError(f"{module} is not a module under {root}")
    h = hashlib.sha256()
    for name in sorted(closure(module, files) if imports else {module}):
        h.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return h.hexdigest()
