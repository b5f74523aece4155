"""Commands on files a render made or reads: `memflow sheet` (a contact sheet of a render) and `memflow lora inspect`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from memflow_cli.errors import InputError
from memflow_cli.cli.app import _Command, _errors, _Group, app, err, out


@app.command("sheet", cls=_Command)
@_errors
def sheet_command(
    video: Path = typer.Argument(..., help="A rendered video (NAME.mp4 or NAME.partial.mp4)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Its manifest (default: NAME.manifest.json beside the video)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where to write the sheet (default: NAME.sheet.png beside the video)."),
    overwrite: bool = typer.Option(False, "--overwrite", "-y", help="Replace an existing sheet."),
):
    """Make the contact sheet of an existing render: a labelled tile per timeline block (from the manifest)."""
    from memflow_cli.render.sheet import sheet_for_video, sheet_path

    if output is not None and output.suffix.lower() != ".png":
        raise InputError(f"{output}: expected a .png file name for the sheet")
    target = output if output is not None else sheet_path(video)
    if target.exists() and not overwrite:  # e.g. the render's own sheet, whose sha256 its manifest records
        raise InputError(f"{target}: exists; add -y/--overwrite to replace it, or choose another name with -o")
    path, made = sheet_for_video(video, manifest, output)
    out.print(f"{path}: {len(made.tiles)} tiles for {len(made.blocks)} blocks", highlight=False, soft_wrap=True)


lora_app = typer.Typer(no_args_is_help=True, cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
                       help="User LoRAs: see what a file holds and whether it fits.")
app.add_typer(lora_app, name="lora")


@lora_app.command("inspect", cls=_Command)
@_errors
def lora_inspect(
    file: Path = typer.Argument(..., metavar="FILE", help="A LoRA file (.safetensors; .pt/.pth/.ckpt/.bin are read weights-only)."),
    config: Optional[Path] = typer.Option(None, "--config", help="The DiT's config.json (default: Wan2.1-T2V-1.3B)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
):
    """Format, rank(s), alpha, targets and what would not match. Exit code 2 when render would refuse it."""
    from rich.table import Table

    from memflow_cli.weights.lora_files import FORMAT_NAMES, LoraError, inspect_lora
    from memflow_cli.model.dit import DiTConfig

    lora = inspect_lora(file, DiTConfig.from_file(config) if config else DiTConfig())
    data = lora.describe()
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        t = Table(show_header=False, title=f"LoRA {file}")
        t.add_column(style="bold")
        t.add_column(overflow="fold")
        t.add_row("format", FORMAT_NAMES.get(lora.format, lora.format or "not recognised"))
        t.add_row("tensors", str(lora.tensor_count))
        t.add_row("rank", ", ".join(map(str, lora.ranks)) or "–")
        t.add_row("alpha", ", ".join(f"{a:g}" for a in lora.alphas) or "none (scale 1)")
        t.add_row("scale (alpha/rank)", ", ".join(f"{v:g}" for v in lora.scales) or "–")
        t.add_row("layers changed", str(lora.modules))
        t.add_row("sha256", lora.sha256 or "")
        out.print(t)
        if lora.targets:
            targets = Table(title="targets")
            targets.add_column("parameter")
            targets.add_column("count", justify="right")
            for name, count in lora.target_groups().items():
                targets.add_row(name, str(count))
            out.print(targets)
        for w in lora.warnings:
            err.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
        if lora.unmatched:
            out.print(f"[bold]would not match[/bold] ({len(lora.unmatched)}):", highlight=False)
            for line in lora.unmatched[:20]:
                out.print(f"  {line}", highlight=False, soft_wrap=True)
            if len(lora.unmatched) > 20:
                out.print(f"  … and {len(lora.unmatched) - 20} more", highlight=False)
    message = lora.error()
    if message:
        raise LoraError(f"render would refuse this file: {message}")
