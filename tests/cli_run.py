"""Run the `memflow` command in-process, as the tests see it: exit code and everything it printed."""

from typer.testing import CliRunner

from memflow_cli.cli.app import app


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout + (result.stderr if result.stderr_bytes is not None else "")
