"""The commands: parsing and printing only, over the render layer's Python API.

app.py holds the Typer application, the shared option parsers and the error handling; each command lives in
its own module, imported here so that it registers on the app: render_cmd (`memflow render`), weights_cmd
(`download`, `info`), bench_cmd (`bench`), files_cmd (`sheet`, `lora inspect`).
"""

# (in this order: the commands' order in `memflow --help`)
from memflow_cli.cli import render_cmd, weights_cmd, bench_cmd, files_cmd  # noqa: F401,I001 (they register)
from memflow_cli.cli.app import app, main

__all__ = ["app", "main"]
