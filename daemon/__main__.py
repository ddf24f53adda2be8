"""`python -m daemon`: the `mlxd` command, for launchers that start a Python module (`mlx.launch`)."""

from daemon.cli import main

main()
