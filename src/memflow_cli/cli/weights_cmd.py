"""`memflow download` (fetch and verify the weights once) and `memflow info` (what is here, the memory plan)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from memflow_cli import __version__
from memflow_cli.errors import InputError
from memflow_cli.cli.app import _Command, _errors, app, err, out, parse_quantization_option, parse_resolution


@app.command(cls=_Command)
@_errors
def download(
    revision: Optional[str] = typer.Option(None, "--revision", help="Revision (branch, tag or commit) of the model's repository."),
    wan_revision: Optional[str] = typer.Option(None, "--wan-revision", help="Wan-AI/Wan2.1-T2V-1.3B revision."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash cached files against the lock file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No plan table, progress bars or closing line; errors only."),
    vace: bool = typer.Option(False, "--vace", help="Also fetch the VACE module (for --control/--mask/--reference offline)."),
    model: str = typer.Option("memflow", "--model", "-m", help="Which model's weights: memflow or longlive."),
    mirror: Optional[str] = typer.Option(None, "--mirror", help="Fetch the model's files from this mirror repository "
                                         "(e.g. daydreamlive/LongLive-1.3B)."),
    vae: str = typer.Option("wan", "--vae", help="Also fetch this decoder's file: wan (always), lightvae, tae or lighttae."),
):
    """Download exactly the weight files a model needs into the Hugging Face cache (resumable)."""
    from memflow_cli.weights import hub
    from memflow_cli.weights.models import get_model

    spec = get_model(model)
    hub.check_revision(revision), hub.check_revision(wan_revision, "--wan-revision")

    from memflow_cli.engine.decoders import decoder_spec

    vae = decoder_spec(vae).kind
    if hub.offline_from_env():
        raise hub.DownloadError("HF_HUB_OFFLINE is set: downloading is disabled; unset it to download")
    from memflow_cli.render.progress import plan_table

    show = None if quiet else (lambda plan: err.print(plan_table(plan)))
    paths, lock = hub.download(hub.HFDownloader(hub.hub_cache(), progress=not quiet), revision=revision,
                               wan_revision=wan_revision, verify_hashes=verify, show=show, model=spec.name, repo=mirror,
                               vae=vae)
    if vace:
        hub.resolve_optional(hub.VACE_FILE, "--vace", downloader=hub.HFDownloader(hub.hub_cache(), progress=not quiet),
                             verify_hashes=verify)
        lock = hub.read_lock(hub.lock_path()) or lock
    if not quiet:
        err.print(f"[green]done[/green]: {len(lock['files'])} files in {hub.hub_cache()}; lock file {hub.lock_path()}")


@app.command(cls=_Command)
@_errors
def info(
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Describe this weights folder instead of the HF cache."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="Also print the memory plan of a render at WIDTHxHEIGHT."),
    low_vram: bool = typer.Option(False, "--low-vram", help="Memory plan with --low-vram."),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="Memory plan with fp8 weights."),
    vae: str = typer.Option("wan", "--vae", help="Memory plan with this decoder: wan, lightvae, tae or lighttae."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Memory plan in this dtype (default bf16)."),
    compile: bool = typer.Option(False, "--compile", help="Memory plan of a --compile render on CUDA (adds the CUDA graphs' pool)."),
):
    """Versions, device, GPU, attention backend, fp8 path, which weight files are present; with --resolution,
    the planned peak GPU memory of a render, part by part."""
    import platform

    import huggingface_hub
    import imageio_ffmpeg
    import torch

    from memflow_cli.weights import hub
    from memflow_cli.model.dit import attention_backend
    from memflow_cli.model.quantization import describe_fp8_path
    from memflow_cli.inputs.prompts import default_cache_dir

    if weights_dir is not None:
        hub.check_folder_option(weights_dir.expanduser(), "--weights-dir")
    plan = None
    if resolution is not None or low_vram or quantization is not None or vae != "wan" or dtype is not None or compile:
        from memflow_cli.weights.memory_plan import plan_memory
        from memflow_cli.render.job import DTYPES, DEFAULT_HEIGHT, DEFAULT_WIDTH

        width, height = parse_resolution(resolution)
        if dtype is not None and dtype not in DTYPES:
            raise InputError(f"--dtype: expected one of bf16, fp16, fp32, got {dtype!r}")
        plan = plan_memory(width or DEFAULT_WIDTH, height or DEFAULT_HEIGHT, dtype=DTYPES[dtype or "bf16"],
                           quantization=parse_quantization_option(quantization), low_vram=low_vram, decoder=vae,
                           overlap=True,  # as `render` does by default (--low-vram keeps it serial)
                           cuda_graphs=compile)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    data = {
        "memflow_cli": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "huggingface_hub": huggingface_hub.__version__,
        "ffmpeg": imageio_ffmpeg.get_ffmpeg_version(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
        "attention": attention_backend(device, torch.bfloat16 if cuda else torch.float32),
        "fp8": describe_fp8_path(device),
        "weights": str(weights_dir) if weights_dir else str(hub.hub_cache()),
        "prompt_cache": str(default_cache_dir()),
        "files": [
            {"model": f.model or "shared", "repo": f.repo, "file": f.filename, "present": path is not None,
             "size": size, "path": str(path) if path else None, "required": f.required}
            for f, path, size in hub.presence(weights_dir)
        ],
        "decoders": [
            {"vae": kind, "repo": f.repo, "file": f.filename, "present": path is not None,
             "path": str(path) if path else None}
            for kind, f, path in hub.decoder_presence(weights_dir)
        ],
    }
    if plan is not None:
        data["memory_plan"] = plan.to_dict()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from rich.table import Table

    from memflow_cli.render.progress import PathCell

    t = Table(show_header=False, title="memflow info")
    t.add_column(style="bold")
    t.add_column()
    for key in ("memflow_cli", "python", "torch", "cuda", "huggingface_hub", "ffmpeg", "device", "gpu", "attention", "fp8", "weights", "prompt_cache"):
        t.add_row(key.replace("_", " "), PathCell(str(data[key])) if key in ("weights", "prompt_cache") else str(data[key]))
    if data["gpu_memory_bytes"]:
        t.add_row("gpu memory", f"{data['gpu_memory_bytes'] / 2**30:.1f} GiB")
    out.print(t)
    files = Table(title="weight files")
    for col in ("model", "file", "size", "status"):
        files.add_column(col)
    for f in data["files"]:
        status = "[green]present[/green]" if f["present"] else ("[red]missing[/red]" if f["required"] else "[dim]missing (optional)[/dim]")
        files.add_row(f["model"], PathCell(f"{f['repo']}/{f['file']}"), hub.human_size(f["size"]) if f["present"] else "", status)
    out.print(files)
    decoders = Table(title="decoders (--vae)")
    for col in ("--vae", "file", "status"):
        decoders.add_column(col)
    for d in data["decoders"]:
        status = "[green]present[/green]" if d["present"] else f"[dim]missing: memflow download --vae {d['vae']}[/dim]"
        decoders.add_row(d["vae"], PathCell(f"{d['repo']}/{d['file']}"), status)
    out.print(decoders)
    if plan is not None:
        from memflow_cli.weights.memory_plan import plan_table as memory_table

        out.print(memory_table(plan))
