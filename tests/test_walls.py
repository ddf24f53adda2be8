"""The architecture's walls, read from the source: every `import` and `from … import` of every module under
`daemon/` (inside functions too, relative ones resolved) is checked against what its package may import.

The wire packages (`daemon.anthropic`, `daemon.openai`) are pure translation and know neither each other,
the engine, HTTP nor the command line; `daemon.chat`, the vocabulary between them, knows nothing but itself;
the engine knows no wire format and no HTTP; only the CLI uses click, only the HTTP layer Quart.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DAEMON = Path(__file__).resolve().parent.parent / "daemon"

HTTP = ("quart", "hypercorn", "werkzeug")
THIRD_PARTY = (*HTTP, "mlx", "mlx_lm", "jinja2", "click")
WIRE = ("daemon.anthropic", "daemon.openai")

# The only modules allowed directly in `daemon/`, beside the packages.
ROOT_MODULES = {"__init__.py", "__main__.py", "server.py"}


@dataclass(frozen=True)
class Wall:
    """Modules within `inside` (and not within `outside`) import nothing within `forbidden` that is not
    within `allowed`; "within" a name is that name or anything below it."""

    name: str
    inside: tuple[str, ...]
    forbidden: tuple[str, ...]
    outside: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()

    def guards(self, module: str) -> bool:
        return within(module, self.inside) and not within(module, self.outside)

    def forbids(self, target: str) -> bool:
        return within(target, self.forbidden) and not within(target, self.allowed)


WIRE_WALL = Wall(
    "the wire packages use no framework, no MLX, and no layer of the daemon but daemon.chat",
    inside=WIRE,
    forbidden=(
        *THIRD_PARTY,
        "daemon.engine",
        "daemon.api",
        "daemon.cli",
        "daemon.server",
        "daemon.store",
        "daemon.client",
        "daemon.service",
    ),
)
ANTHROPIC_WALL = Wall(
    "daemon.anthropic does not import daemon.openai",
    inside=("daemon.anthropic",),
    forbidden=("daemon.openai",),
)
OPENAI_WALL = Wall(
    "daemon.openai does not import daemon.anthropic",
    inside=("daemon.openai",),
    forbidden=("daemon.anthropic",),
)
CHAT_WALL = Wall(
    "daemon.chat imports nothing of the daemon but itself, and no framework or MLX",
    inside=("daemon.chat",),
    forbidden=("daemon", *THIRD_PARTY),
    allowed=("daemon.chat",),
)
ENGINE_WALL = Wall(
    "the engine knows no wire format, no HTTP and no command line",
    inside=("daemon.engine",),
    forbidden=(*WIRE, *HTTP, "daemon.api", "daemon.server", "click", "daemon.cli", "daemon.client"),
)
CLICK_WALL = Wall(
    "only daemon.cli imports click", inside=("daemon",), outside=("daemon.cli",), forbidden=("click",)
)
HTTP_WALL = Wall(
    "only daemon.api and daemon.server import Quart, Hypercorn or Werkzeug",
    inside=("daemon",),
    outside=("daemon.api", "daemon.server"),
    forbidden=HTTP,
)
WALLS = (WIRE_WALL, ANTHROPIC_WALL, OPENAI_WALL, CHAT_WALL, ENGINE_WALL, CLICK_WALL, HTTP_WALL)


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in prefixes)


@dataclass(frozen=True)
class Import:
    """One name a module imports: `target` is its full dotted name (`quart.g` for `from quart import g`)."""

    module: str
    path: Path
    line: int
    statement: str
    target: str

    def describe(self) -> str:
        return f"{self.module} ({self.path}:{self.line}) imports {self.target} by `{self.statement}`"


def modules(root: Path) -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every module in the package at `root`."""
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def imports(root: Path) -> Iterator[Import]:
    """Every name imported anywhere in the package at `root`, relative imports made absolute."""
    for module, path in modules(root):
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                yield Import(module, path.relative_to(root.parent), node.lineno, ast.unparse(node), target)


def breaches(wall: Wall, root: Path) -> list[str]:
    """A line naming the module, the import and the wall, for each import in `root` that crosses `wall`."""
    return [
        f"{found.describe()}: {wall.name}"
        for found in imports(root)
        if wall.guards(found.module) and wall.forbids(found.target)
    ]


def loose_modules(root: Path) -> list[str]:
    return [
        f"{path.relative_to(root.parent)} sits loose at the root of {root.name}/; it belongs in a package"
        for path in sorted(root.glob("*.py"))
        if path.name not in ROOT_MODULES
    ]


@pytest.mark.parametrize("wall", WALLS, ids=lambda wall: wall.name)
def test_daemon_keeps_the_wall(wall: Wall) -> None:
    found = breaches(wall, DAEMON)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("wall", WALLS, ids=lambda wall: wall.name)
def test_every_wall_guards_some_module(wall: Wall) -> None:
    # A package renamed or moved would leave its wall guarding nothing, and passing for that reason.
    assert any(wall.guards(module) for module, _ in modules(DAEMON)), f"no module is inside: {wall.name}"


def test_no_module_sits_loose_at_the_root() -> None:
    found = loose_modules(DAEMON)
    assert not found, "\n".join(found)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "daemon"


def test_the_checker_flags_an_import_inside_a_function(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "daemon/__init__.py": "",
            "daemon/engine/__init__.py": "",
            "daemon/engine/model.py": "import json\n\n\ndef load():\n    from quart import g\n    return g\n",
        },
    )
    assert breaches(ENGINE_WALL, root) == [
        "daemon.engine.model (daemon/engine/model.py:5) imports quart.g by `from quart import g`: "
        "the engine knows no wire format, no HTTP and no command line"
    ]
    assert breaches(HTTP_WALL, root) == [
        "daemon.engine.model (daemon/engine/model.py:5) imports quart.g by `from quart import g`: "
        "only daemon.api and daemon.server import Quart, Hypercorn or Werkzeug"
    ]


def test_the_checker_resolves_relative_imports_and_reads_plain_ones(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "daemon/__init__.py": "",
            "daemon/chat/__init__.py": "from . import request\n",
            "daemon/chat/request.py": (
                "from .errors import RequestError\nfrom ..engine import prompt\nimport os, mlx.core as mx\n"
            ),
            "daemon/anthropic/__init__.py": "from ..openai.errors import error_body\n",
        },
    )
    assert breaches(CHAT_WALL, root) == [
        "daemon.chat.request (daemon/chat/request.py:2) imports daemon.engine.prompt by "
        f"`from ..engine import prompt`: {CHAT_WALL.name}",
        f"daemon.chat.request (daemon/chat/request.py:3) imports mlx.core by `import os, mlx.core as mx`: "
        f"{CHAT_WALL.name}",
    ]
    assert breaches(ANTHROPIC_WALL, root) == [
        "daemon.anthropic (daemon/anthropic/__init__.py:1) imports daemon.openai.errors.error_body by "
        "`from ..openai.errors import error_body`: daemon.anthropic does not import daemon.openai"
    ]


def test_the_checker_flags_a_module_loose_at_the_root(tmp_path: Path) -> None:
    root = write(tmp_path, {"daemon/__init__.py": "", "daemon/server.py": "", "daemon/util.py": ""})
    assert loose_modules(root) == [
        "daemon/util.py sits loose at the root of daemon/; it belongs in a package"
    ]
