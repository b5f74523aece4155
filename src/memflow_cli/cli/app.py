"""The Typer application: the shared option parsers, error handling and the entry point (commands: cli/*_cmd.py).

Options are parsed here and handed on; every error the user can act on is a MemflowError that is printed
as one message (no traceback) and becomes the exit code (2 for bad input, 130 after Ctrl-C).
"""

from __future__ import annotations

import functools
import os
import sys

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from memflow_cli import __version__
from memflow_cli.errors import InputError, MemflowError

def _plain_flags(params):
    """Flags take no value: show none (typer prints `<bool>` for them, --help included); a list of paths
    reads `<path>...`, not the Python type `list[Path]`."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
        if param.param_type_name == "argument" and param.nargs != 1:
            param.display_type_rich = lambda ctx: "<path>..."
        if param.param_type_name == "argument" and param.required and hasattr(param, "_usage_display_name"):
            # typer writes a required argument `{FILE}` in the usage line: plain `FILE`, as click and man pages do
            param._usage_display_name = functools.partial(_usage_name, param)
    return params


def _usage_name(param) -> str:
    return (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")


class _Command(TyperCommand):
    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx):
        return _plain_flags(super().get_params(ctx))


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_Group,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Render MemFlow long videos offline: a timeline of prompts in, an mp4 out.")
DTYPE_HELP = "bf16, fp16 or fp32 (default: bf16 on a GPU, fp32 on the CPU)."
err = Console(stderr=True)
out = Console()


def _errors(fn):
    """Turn MemflowError into a message + exit code; Ctrl-C, SIGTERM and SIGHUP into 128 + the signal."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from memflow_cli.render.signals import exit_code_of, stop_on_signals

        # The handlers stay until the message is printed: a second Ctrl-C meanwhile prints no traceback.
        with stop_on_signals(lambda text: err.print(f"[yellow]{text}[/yellow]", highlight=False)):
            try:
                return fn(*args, **kwargs)
            except MemflowError as exc:
                if exc.exit_code >= 128:  # stopped by Ctrl-C or a signal: not an error; say what was kept
                    err.print(f"[yellow]{exc}[/yellow]", highlight=False, soft_wrap=True)
                else:
                    err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt as exc:
                err.print("[yellow]stopped[/yellow]")
                raise typer.Exit(exit_code_of(exc)) from None

    return wrapper


def parse_resolution(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        w, h = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise InputError(f"--resolution: expected WIDTHxHEIGHT such as 832x480, got {text!r}") from None
    from memflow_cli.inputs.timeline import MAX_SIDE

    if w <= 0 or h <= 0 or w % 16 or h % 16 or max(w, h) > MAX_SIDE:
        raise InputError(f"--resolution: expected width and height that are positive multiples of 16 up to {MAX_SIDE}, got {text!r}")
    return w, h


def parse_ints(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise InputError(f"{option}: expected comma-separated integers such as 40,80,120, got {shown!r}") from None


def parse_steps(text: str | None) -> tuple[int, ...] | None:
    """--steps under the same rule as a file's denoising steps: decreasing integers in 1..1000."""
    from memflow_cli.limits import check_steps

    values = parse_ints(text, "--steps")
    return None if values is None else check_steps(values, "--steps")


def parse_overlap_option(text: str | None, off: bool) -> str:
    """--overlap auto|on|off, with --no-overlap as the alias of off (both at once must agree)."""
    from memflow_cli.engine.decode_stage import OVERLAP_MODES

    mode = None if text is None else text.strip().lower()
    if mode is not None and mode not in OVERLAP_MODES:
        raise InputError(f"--overlap: expected one of {', '.join(OVERLAP_MODES)}, got {text!r}")
    if off and mode not in (None, "off"):
        raise InputError(f"--no-overlap contradicts --overlap {mode}; give one of them")
    return "off" if off else (mode or "auto")


def parse_compile_mode(text: str | None) -> str | None:
    from memflow_cli.engine.compiled import COMPILE_MODES

    if text is not None and text not in COMPILE_MODES:
        raise InputError(f"--compile-mode: expected one of {', '.join(COMPILE_MODES)}, got {text!r}")
    return text


def parse_quantization_option(text: str | None) -> str | None:
    from memflow_cli.model.quantization import parse_quantization

    try:
        return parse_quantization(text, "--quantization")
    except ValueError as exc:
        raise InputError(str(exc)) from None


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        print(__version__)
        raise typer.Exit(0)


def main() -> None:
    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        raise
    finally:
        # The command has decided how it ends (its message and exit code are out). A signal arriving while
        # Python shuts down (atexit handlers, finalizers) must not print a traceback over that.
        import signal

        from memflow_cli.render.signals import STOP_SIGNALS

        for s in STOP_SIGNALS:
            try:
                signal.signal(s, signal.SIG_IGN)
            except (ValueError, OSError):
                pass
        # A second Ctrl-C left a decode running on its thread (its frames are not written): leave now, as
        # Python's shutdown would end that thread inside a torch op and abort (exit code 134 instead of 130).
        stage = sys.modules.get("memflow_cli.engine.decode_stage")
        if stage is not None and stage.abandoned_decodes_running():
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 — the terminal may be gone
                    pass
            os._exit(code)


if __name__ == "__main__":
    main()
