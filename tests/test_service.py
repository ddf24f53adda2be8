"""`mlxd service`: the plist and the systemd unit as rendered, and the exact launchctl / systemctl command
lines, recorded by stand-ins put first on PATH (the one process boundary these tests do not cross)."""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from daemon.cli import main
from daemon.config.settings import Settings, default_config_path, default_token_path
from daemon.service.launchd import TEMPLATE
from daemon.service.spec import ServiceSpec
from daemon.service.systemd import render_unit
from tests.conftest import MLXD, free_port, run_server

# A home folder whose name needs escaping in XML (& <), in unit files (% $ " \) and in shells (space ').
ODD_NAME = "my home & <work> 'x' \"q\" 50% $HOME \\ end"
UID = os.getuid()

# What `launchctl print` says of a running agent; the nested block's `state` must not be mistaken for it.
LAUNCHCTL_PRINT = """\
gui/{uid}/io.mlxd.daemon = {{
\tactive count = 1
\tpath = /Users/me/Library/LaunchAgents/io.mlxd.daemon.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/me/.venv/bin/mlxd
\tevent triggers = {{
\t\tcom.apple.event = {{
\t\t\tstate = 0
\t\t}}
\t}}

\truns = 1
\tpid = 4242
\tlast exit code = (never exited)
\tproperties = keepalive | runatload
}}
"""

# The stand-in for launchctl, systemctl and journalctl: records its argv as a JSON line, and keeps just
# enough state (loaded or not) for launchctl's answers to follow what was done.
RECORDER = f"""\
#!{sys.executable}
import json, os, sys
from pathlib import Path

record = Path(os.environ["MLXD_TEST_RECORD"])
tool, args = Path(sys.argv[0]).name, sys.argv[1:]
with record.open("a") as file:
    file.write(json.dumps([tool, *args]) + "\\n")
loaded = record.with_name("launchd-loaded")
if tool == "launchctl":
    if args[0] == "print":
        if not loaded.exists():
            sys.exit("Bad request.\\nCould not find service in domain for port")
        print({LAUNCHCTL_PRINT.format(uid=UID)!r})
    elif args[0] == "bootstrap":
        loaded.touch()
    elif args[0] in ("bootout", "kickstart") and not loaded.exists():
        sys.exit("Boot-out failed: 3: No such process")
    elif args[0] == "bootout":
        loaded.unlink()
elif tool == "systemctl" and "show" in args:
    print("ActiveState=active\\nSubState=running\\nMainPID=4242")
"""


class Recorder:
    def __init__(self, folder: Path):
        self.path = folder / "calls.jsonl"
        self.path.touch()

    def calls(self) -> list[list[str]]:
        """The calls since the last look."""
        lines = self.path.read_text().splitlines()
        self.path.write_text("")
        return [json.loads(line) for line in lines]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An odd HOME with nothing of the real user's: config, token and service files all land under it."""
    home = tmp_path / ODD_NAME
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith(("MLXD_", "XDG_", "HF_")):
            monkeypatch.delenv(name)
    return home


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("launchctl", "systemctl", "journalctl"):
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    recorder = Recorder(tmp_path)
    monkeypatch.setenv("MLXD_TEST_RECORD", str(recorder.path))
    return recorder


@pytest.fixture(params=["launchd", "systemd"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLXD_SERVICE_BACKEND", request.param)
    return request.param


def mlxd(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def config_with_port(port: int) -> Path:
    config = default_config_path()
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"port = {port}\n")
    return config


def test_plist_carries_every_key_with_absolute_escaped_paths(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLXD_SERVICE_BACKEND", "launchd")
    monkeypatch.setenv("HF_HOME", str(home / "hf cache"))
    result = mlxd("service", "plist")
    assert result.exit_code == 0, result.output
    assert "&amp;" in result.stdout and "&lt;work&gt;" in result.stdout
    plist = plistlib.loads(result.stdout.encode())

    config = default_config_path()
    logs = home / "Library" / "Logs" / "mlxd"
    assert plist["Label"] == "io.mlxd.daemon"
    assert plist["ProgramArguments"] == [str(MLXD), "serve", "--config", str(config)]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] >= 1
    assert plist["ProcessType"] == "Interactive"
    assert plist["ExitTimeOut"] > Settings().shutdown_grace + 5  # longer than the daemon's drain
    assert plist["StandardOutPath"] == str(logs / "stdout.log")
    assert plist["StandardErrorPath"] == str(logs / "stderr.log")
    env = plist["EnvironmentVariables"]
    assert env["PATH"].split(os.pathsep)[0] == str(MLXD.parent)
    assert env["MLXD_CONFIG"] == str(config)
    assert env["MLXD_LOG_FILE"] == str(logs / "mlxd.log")
    assert env["HF_HOME"] == str(home / "hf cache")
    assert "HF_HUB_CACHE" not in env
    assert Path(plist["WorkingDirectory"]).is_absolute() and Path(env["MLXD_CONFIG"]).is_absolute()
    # Printing installs nothing.
    assert not (home / "Library" / "LaunchAgents").exists()
    assert not config.exists()


def test_the_launchd_folder_shows_the_packaged_template() -> None:
    # One file, two names: the package ships it, the repository's launchd/ links to it, so they cannot drift.
    assert (Path(__file__).parents[1] / "launchd" / "io.mlxd.daemon.plist").resolve() == Path(
        str(TEMPLATE)
    ).resolve()


def test_systemd_unit_quotes_and_escapes_what_systemd_would_expand() -> None:
    odd = '/h/50% "q" $HOME \\ end'
    spec = ServiceSpec(
        program=["/venv/bin/mlxd", "serve", "--config", f"{odd}/config.toml"],
        environment={"PATH": "/venv/bin:/usr/bin", "MLXD_CONFIG": f"{odd}/config.toml"},
        working_directory=Path(f"{odd}/data"),
        config_path=Path(f"{odd}/config.toml"),
        log_dir=Path("/h/logs"),
        log_file=Path("/h/logs/mlxd.log"),
    )
    assert render_unit(spec) == textwrap.dedent(
        """\
        [Unit]
        Description=mlxd: MLX models behind Anthropic's Messages API

        [Service]
        Type=exec
        ExecStart="/venv/bin/mlxd" "serve" "--config" "/h/50%% \\"q\\" $$HOME \\\\ end/config.toml"
        WorkingDirectory=/h/50%% "q" $HOME \\ end/data
        Environment="PATH=/venv/bin:/usr/bin"
        Environment="MLXD_CONFIG=/h/50%% \\"q\\" $HOME \\\\ end/config.toml"
        # Restart after a crash, not after a clean stop (SIGTERM exits 0).
        Restart=on-failure
        RestartSec=10
        # Before SIGKILL: longer than the daemon's drain of the streams in flight (shutdown_grace, 30 s by
        # default, plus 5 s to send their last events).
        TimeoutStopSec=60

        [Install]
        WantedBy=default.target
        """
    )


def test_systemd_unit_from_the_cli(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXD_SERVICE_BACKEND", "systemd")
    unit = mlxd("service", "plist").stdout
    assert {"Restart=on-failure", "WantedBy=default.target"} <= set(unit.splitlines())
    commands = [
        line.removeprefix("ExecStart=") for line in unit.splitlines() if line.startswith("ExecStart=")
    ]
    assert unquoted(commands[0], in_command=True) == [
        str(MLXD),
        "serve",
        "--config",
        str(default_config_path()),
    ]
    variables = [
        line.removeprefix("Environment=") for line in unit.splitlines() if line.startswith("Environment=")
    ]
    environment = dict(word.split("=", 1) for line in variables for word in unquoted(line))
    log_file = home / ".local" / "state" / "mlxd" / "log" / "mlxd.log"
    assert environment["MLXD_LOG_FILE"] == str(log_file)
    assert environment["MLXD_CONFIG"] == str(default_config_path())


def unquoted(value: str, in_command: bool = False) -> list[str]:
    """The words systemd reads from a setting: quotes and backslash escapes as a POSIX shell reads them in
    double quotes, then `%%` and (in commands) `$$` undone."""
    words = [word.replace("%%", "%") for word in shlex.split(value)]
    return [word.replace("$$", "$") for word in words] if in_command else words


def test_launchctl_command_lines(home: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXD_SERVICE_BACKEND", "launchd")
    plist_path = home / "Library" / "LaunchAgents" / "io.mlxd.daemon.plist"
    domain, target = f"gui/{UID}", f"gui/{UID}/io.mlxd.daemon"
    config = config_with_port(free_port())  # nothing listens there
    config_text = config.read_text()

    result = mlxd("service", "install")
    assert result.exit_code == 0, result.output
    assert recorder.calls() == [
        ["launchctl", "print", target],
        ["launchctl", "bootstrap", domain, str(plist_path)],
    ]
    assert plist_path.read_text() == mlxd("service", "plist").stdout
    assert config.read_text() == config_text  # an existing config is kept
    token = default_token_path()
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text().strip()) >= 32
    assert (home / "Library" / "Logs" / "mlxd").is_dir()

    first_token = token.read_text()
    assert mlxd("service", "install").exit_code == 0
    assert recorder.calls() == [
        ["launchctl", "print", target],
        ["launchctl", "bootout", target],
        ["launchctl", "print", target],
        ["launchctl", "bootstrap", domain, str(plist_path)],
    ]
    assert token.read_text() == first_token  # a token that exists is kept

    status = mlxd("service", "status")
    assert recorder.calls() == [["launchctl", "print", target]]
    assert "launchd, running, pid 4242" in status.stdout
    assert "not answering (connection refused)" in status.stdout
    assert status.exit_code == 3

    assert mlxd("service", "restart").exit_code == 0
    assert recorder.calls() == [["launchctl", "print", target], ["launchctl", "kickstart", "-k", target]]
    assert mlxd("service", "stop").exit_code == 0
    assert recorder.calls() == [
        ["launchctl", "print", target],
        ["launchctl", "bootout", target],
        ["launchctl", "print", target],
    ]
    assert mlxd("service", "start").exit_code == 0
    assert recorder.calls() == [
        ["launchctl", "print", target],
        ["launchctl", "bootstrap", domain, str(plist_path)],
    ]
    assert mlxd("service", "start").exit_code == 0
    assert recorder.calls() == [["launchctl", "print", target], ["launchctl", "kickstart", target]]

    assert mlxd("service", "uninstall").exit_code == 0
    assert recorder.calls() == [
        ["launchctl", "print", target],
        ["launchctl", "bootout", target],
        ["launchctl", "print", target],
    ]
    assert not plist_path.exists()
    again = mlxd("service", "uninstall")
    assert again.exit_code == 0 and "not installed" in again.stdout
    assert recorder.calls() == [["launchctl", "print", target]]

    status = mlxd("service", "status")
    assert "not installed" in status.stdout and status.exit_code == 3


def test_systemctl_command_lines(home: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXD_SERVICE_BACKEND", "systemd")
    unit_path = home / ".config" / "systemd" / "user" / "mlxd.service"
    config_with_port(free_port())

    for _ in range(2):  # a second install replaces the first
        assert mlxd("service", "install").exit_code == 0
        assert recorder.calls() == [
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "mlxd.service"],
            ["systemctl", "--user", "restart", "mlxd.service"],
        ]
    assert unit_path.read_text() == mlxd("service", "plist").stdout

    status = mlxd("service", "status")
    assert recorder.calls() == [
        ["systemctl", "--user", "show", "-p", "ActiveState,SubState,MainPID", "mlxd.service"]
    ]
    assert "systemd, active (running), pid 4242" in status.stdout and status.exit_code == 3

    for verb in ("restart", "stop", "start"):
        assert mlxd("service", verb).exit_code == 0
        assert recorder.calls() == [["systemctl", "--user", verb, "mlxd.service"]]

    assert mlxd("service", "uninstall").exit_code == 0
    assert recorder.calls() == [
        ["systemctl", "--user", "disable", "--now", "mlxd.service"],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert not unit_path.exists()
    assert "not installed" in mlxd("service", "uninstall").stdout
    assert recorder.calls() == []


def test_install_without_auth_creates_no_token_and_a_starter_config(
    home: Path, recorder: Recorder, backend: str
) -> None:
    result = mlxd("service", "install", "--no-auth")
    assert result.exit_code == 0, result.output
    assert not default_token_path().exists()
    assert "model = " in default_config_path().read_text()
    assert "created a starter config" in result.stdout


def test_a_config_the_daemon_would_refuse_stops_the_install(
    home: Path, recorder: Recorder, backend: str
) -> None:
    config = default_config_path()
    config.parent.mkdir(parents=True)
    config.write_text("prot = 8000\n")
    result = mlxd("service", "install")
    assert result.exit_code == 1
    assert "prot" in result.stderr
    assert recorder.calls() == []


def test_start_before_install_says_what_to_do(home: Path, recorder: Recorder, backend: str) -> None:
    result = mlxd("service", "start")
    assert result.exit_code == 1 and "run `mlxd service install`" in result.stderr


def test_status_reports_the_running_daemon(
    home: Path, recorder: Recorder, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLXD_SERVICE_BACKEND", "systemd")
    assert mlxd("service", "install", "--no-auth").exit_code == 0
    with run_server(tmp_path / "server", "--model", str(tiny_model), "--model-name", "tiny") as server:
        config_with_port(int(server.url.rsplit(":", 1)[1]))
        result = mlxd("service", "status")
    assert result.exit_code == 0, result.output
    assert f"{server.url}: ok, mlxd " in result.stdout and "models: tiny" in result.stdout


def test_logs_show_the_last_lines(home: Path, recorder: Recorder, backend: str) -> None:
    env = dict(os.environ)
    if backend == "systemd":
        # No log file yet: the journal has what the daemon printed.
        result = subprocess.run([str(MLXD), "service", "logs", "-n", "5"], env=env, capture_output=True)
        assert result.returncode == 0, result.stderr
        assert recorder.calls() == [["journalctl", "--user", "-u", "mlxd.service", "-n", "5", "--no-pager"]]
        log_dir = home / ".local" / "state" / "mlxd" / "log"
    else:
        log_dir = home / "Library" / "Logs" / "mlxd"
    log_dir.mkdir(parents=True)
    (log_dir / "mlxd.log").write_text("".join(f"line {n}\n" for n in range(10)))
    result = subprocess.run(
        [str(MLXD), "service", "logs", "-n", "2"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "line 8\nline 9\n"


@pytest.mark.parametrize(
    "command", ["install", "uninstall", "start", "stop", "restart", "status", "logs", "plist"]
)
def test_help_is_complete(command: str) -> None:
    result = mlxd("service", command, "--help")
    assert result.exit_code == 0
    summary = mlxd("service", "--help").stdout
    assert command in summary
    assert len(result.stdout.split("\n\n")[1].strip()) > 20  # a sentence of help, not just usage
