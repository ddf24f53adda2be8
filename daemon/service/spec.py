"""What the service runs, the same under launchd and systemd: the command line, its environment and its
folders, all absolute, plus the starter config file the service is pointed at."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from daemon.config.settings import data_dir
from daemon.service.common import ServiceError

# Variables of the installing shell that the service needs to find the same files: the Hugging Face cache
# (models downloaded from the shell are not downloaded again) and mlxd's own folders when moved.
PASSED_THROUGH = ("HF_HOME", "HF_HUB_CACHE", "MLXD_CONFIG_DIR", "MLXD_DATA_DIR")

STARTER_CONFIG = """\
# mlxd's configuration; the service runs `mlxd serve --config {path}`.
# Every key is optional; `mlxd serve --help` lists them all. After a change: mlxd service restart
#
# model = "mlx-community/Qwen3-4B-Instruct-2507-4bit"   # a Hugging Face repo id or a local folder
# model_name = "local"                                  # the id clients ask for
# port = 8484
"""


@dataclass(frozen=True)
class ServiceSpec:
    program: list[str]
    environment: dict[str, str]
    working_directory: Path
    config_path: Path
    log_dir: Path
    log_file: Path


def build_spec(config_path: Path, log_dir: Path, environ: Mapping[str, str] = os.environ) -> ServiceSpec:
    mlxd = mlxd_executable()
    config_path = config_path.expanduser().absolute()
    log_file = log_dir / "mlxd.log"
    environment = {
        # Service managers start with a bare PATH; keep the installing shell's, this installation first.
        "PATH": os.pathsep.join(_search_path(mlxd.parent, environ.get("PATH", ""))),
        "MLXD_CONFIG": str(config_path),
        "MLXD_LOG_FILE": str(log_file),
    }
    for name in PASSED_THROUGH:
        if environ.get(name):
            environment[name] = str(Path(environ[name]).expanduser().absolute())
    return ServiceSpec(
        program=[str(mlxd), "serve", "--config", str(config_path)],
        environment=environment,
        working_directory=data_dir().expanduser().absolute(),
        config_path=config_path,
        log_dir=log_dir,
        log_file=log_file,
    )


def mlxd_executable() -> Path:
    """This installation's `mlxd`: beside the interpreter (virtual environments, pipx), else the script
    that is running (user installs put scripts elsewhere)."""
    candidates = [Path(sys.executable).parent / "mlxd", Path(sys.argv[0])]
    for candidate in candidates:
        if candidate.name == "mlxd" and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.absolute()
    raise ServiceError(f"cannot find the mlxd executable of this installation (looked at {candidates})")


def ensure_config(path: Path) -> bool:
    """Create a commented starter config unless one exists (the service refuses to start without the file
    it names); returns whether it was created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STARTER_CONFIG.format(path=path))
    return True


def prepare_folders(spec: ServiceSpec) -> None:
    """The folders the service manager expects to exist before it starts the daemon."""
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    spec.working_directory.mkdir(parents=True, exist_ok=True)


def _search_path(first: Path, path: str) -> list[str]:
    entries = [str(first), *(entry for entry in path.split(os.pathsep) if os.path.isabs(entry))]
    return list(dict.fromkeys(entries))
