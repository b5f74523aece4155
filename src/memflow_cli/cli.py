"""`memflow render | download | info | bench`: a thin Typer layer over render.py, hub.py and bench.py.

Options are parsed here and handed on; every error the user can act on is a MemflowError that is printed
as one message (no traceback) and becomes the exit code (2 for bad input, 130 after Ctrl-C).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from memflow_cli import __version__
from memflow_cli.errors import InputError, MemflowError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Render MemFlow long videos offline: a timeline of prompts in, an mp4 out.")
err = Console(stderr=True)
out = Console()


def _errors(fn):
    """Turn MemflowError into a message + exit code; Ctrl-C, SIGTERM and SIGHUP into 128 + the signal."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from memflow_cli.signals import exit_code_of, stop_on_signals

        # The handlers stay until the message is printed: a second Ctrl-C meanwhile prints no traceback.
        with stop_on_signals(lambda text: err.print(f"[yellow]{text}[/yellow]", highlight=False)):
            try:
                return fn(*args, **kwargs)
            except MemflowError as exc:
                err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt as exc:
                err.print("[yellow]interrupted[/yellow]")
                raise typer.Exit(exit_code_of(exc)) from None

    return wrapper


def parse_resolution(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        w, h = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise InputError(f"--resolution: expected WIDTHxHEIGHT such as 832x480, got {text!r}") from None
    from memflow_cli.timeline import MAX_SIDE

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


@app.command()
@_errors
def render(
    timelines: Optional[List[Path]] = typer.Argument(None, help="Scope timeline / workflow JSON or MemFlow prompt-list JSONL files, or folders of them (a batch)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Render a single prompt instead of a file."),
    seconds: float = typer.Option(10.0, "--seconds", help="Duration for --prompt."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output .mp4 (default: the timeline's name)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Folder for the outputs of a batch (created if missing)."),
    overwrite: bool = typer.Option(False, "--overwrite", "-y", "--force", help="Replace existing outputs (and re-render finished batch items)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default: the file's, else 1)."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="WIDTHxHEIGHT, multiples of 16 (default 832x480)."),
    sma: Optional[bool] = typer.Option(None, "--sma/--no-sma", help="Sparse memory activation (default off)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Denoising steps, e.g. 1000,750,500,250."),
    blend: str = typer.Option("linear", "--blend", help="Blend of a block's two prompts: linear or slerp."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda if available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU)."),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="A weights folder instead of the HF cache."),
    offline: bool = typer.Option(False, "--offline", help="Never download; use cached weights only."),
    revision: Optional[str] = typer.Option(None, "--revision", help="KlingTeam/MemFlow revision to use."),
    segment_seconds: Optional[float] = typer.Option(None, "--segment-seconds", help="Prompt-list JSONL: seconds per prompt (default 10)."),
    switch_frames: Optional[str] = typer.Option(None, "--switch-frames", help="Prompt-list JSONL: switch points in latent frames, e.g. 40,80,120,160,200."),
    latent_frames: Optional[int] = typer.Option(None, "--latent-frames", help="With --switch-frames: total latent frames (default 240)."),
    line: Optional[int] = typer.Option(None, "--line", help="Prompt-list JSONL: render only this line (1-based)."),
    lora_dir: List[Path] = typer.Option([], "--lora-dir", help="Folder to find a timeline's LoRA files by name."),
    verify: bool = typer.Option(False, "--verify", help="Check weight files against their recorded sha256."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or table."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted render from its NAME.resume/ checkpoint."),
    checkpoint_every: float = typer.Option(300.0, "--checkpoint-every", help="Seconds between resume checkpoints (0 = only when stopped by a signal)."),
    max_hours: float = typer.Option(24.0, "--max-hours", help="Refuse timelines longer than this many hours of video."),
    control: Optional[Path] = typer.Option(None, "--control", help="VACE: control video (depth, pose, edges, sketch…) guiding the structure."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="VACE: mask video; white is regenerated, black kept from --control."),
    reference: List[Path] = typer.Option([], "--reference", help="VACE: reference image for the subject (repeatable)."),
    vace_scale: Optional[float] = typer.Option(None, "--vace-scale", help="VACE strength, 0 to 2 (default: the file's, else 1.0)."),
    vae: Optional[str] = typer.Option(None, "--vae", help="Decoder: wan (default), lightvae, tae or lighttae (default: the timeline's vae_type, else wan)."),
):
    """Render timelines (or --prompt) to mp4s, each with a manifest next to it. Several files or folders
    make a batch: the weights load once, every item streams in turn, a failing item does not stop the rest."""
    from memflow_cli.progress import Reporter, RichReporter, batch_table, summary_table
    from memflow_cli.render import RenderOptions, Renderer, batch_exit_code
    from memflow_cli.distributed import world_from_env
    from memflow_cli.timeline import prompt_timeline

    paths = list(timelines or [])
    if bool(paths) == (prompt is not None):
        raise InputError("expected timeline files or --prompt TEXT (one of them)")
    if blend not in ("linear", "slerp"):
        raise InputError(f"--blend: expected linear or slerp, got {blend!r}")
    width, height = parse_resolution(resolution)
    if not (checkpoint_every >= 0 and checkpoint_every != float("inf")):
        raise InputError(f"--checkpoint-every: expected seconds >= 0 (0 = only on signals), got {checkpoint_every}")
    from memflow_cli.limits import check_seed

    if seed is not None:
        check_seed(seed, "--seed")
    parsed_steps = parse_steps(steps)
    if prompt is not None:
        items = [("--prompt", prompt_timeline(prompt, seconds))]
    else:
        items = batch_items(paths, line=line, segment_seconds=segment_seconds, lora_dirs=lora_dir,
                            switch_frames=parse_ints(switch_frames, "--switch-frames"), num_latent_frames=latent_frames)
    if output is not None and len(items) > 1:
        raise InputError(f"-o/--output names one file, but there are {len(items)} items to render; "
                         "use --output-dir DIR for a batch")
    options = RenderOptions(output=output, seed=seed, width=width, height=height, sma=sma,
                            steps=parsed_steps, blend=blend, device=device, dtype=dtype,
                            weights_dir=weights_dir, offline=offline, revision=revision, verify_hashes=verify,
                            output_dir=output_dir, overwrite=overwrite, resume=resume,
                            checkpoint_every=checkpoint_every, max_hours=max_hours,
                            control=control, mask=mask, references=tuple(reference), vace_scale=vace_scale,
                            vae=vae)
    reporter = Reporter() if quiet else RichReporter(err)
    world = world_from_env()
    if world is not None:  # under torchrun: this rank renders its share, rank 0 reports for all
        return render_distributed(world, items, options, reporter, as_json=as_json, quiet=quiet)
    if len(items) == 1:  # one render: its errors are the command's errors
        name, item = items[0]
        if isinstance(item, MemflowError):
            raise item
        summary = Renderer(options, reporter).render(item)
        if as_json:
            print(json.dumps(summary.to_dict(), indent=2))
        elif not quiet:
            out.print(summary_table(summary))
        return
    results = Renderer(options, reporter).render_batch(items)
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    elif not quiet:
        out.print(batch_table(results))
    code = batch_exit_code(results)
    if code:
        failed = sum(r.status not in ("done", "skipped") for r in results)
        err.print(f"[red]error:[/red] {failed} of {len(results)} item(s) did not complete", highlight=False)
        raise typer.Exit(code)


def render_distributed(world, items, options, reporter, *, as_json: bool, quiet: bool) -> None:
    from memflow_cli import distributed
    from memflow_cli.progress import Reporter, batch_table
    from memflow_cli.render import BatchResult, RenderSummary, Renderer, batch_exit_code, plan_job

    options.device = distributed.rank_device(world, options.device)
    distributed.init(world, options.device)
    try:
        frames = []
        for _, item in items:
            try:
                frames.append(0 if isinstance(item, MemflowError) else plan_job(item, options).schedule.total_frames)
            except MemflowError:
                frames.append(0)
        owner = distributed.assign(frames, world.size)
        mine = [i for i, o in enumerate(owner) if o == world.rank]
        renderer = Renderer(options, reporter if world.is_main else Reporter())
        results = renderer.render_batch([items[i] for i in mine]) if mine else []
        gathered = distributed.gather([(i, r.to_dict()) for i, r in zip(mine, results)])
    finally:
        distributed.finish()
    if not world.is_main:
        raise typer.Exit(batch_exit_code(results))
    merged = sorted((pair for part in gathered for pair in part), key=lambda pair: pair[0])
    everything = []
    for _, d in merged:
        summary = RenderSummary(**d["summary"]) if d["summary"] else None
        everything.append(BatchResult(d["item"], d["status"], d["output"], summary, d["message"],
                                      0 if d["status"] in ("done", "skipped") else d.get("exit_code", 1)))
    if as_json:
        print(json.dumps([r.to_dict() for r in everything], indent=2))
    elif not quiet:
        out.print(batch_table(everything))
    code = batch_exit_code(everything)
    if code:
        failed = sum(r.status not in ("done", "skipped") for r in everything)
        err.print(f"[red]error:[/red] {failed} of {len(everything)} item(s) did not complete", highlight=False)
    raise typer.Exit(code)


def batch_items(paths, *, line=None, **read_options) -> list:
    """(name, Timeline or the error that made it unreadable) for every item: a folder means its *.json and
    *.jsonl files; a JSONL line is an item. Unreadable items stay in the list so the batch reports them."""
    from memflow_cli.timeline import read_timelines

    files = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in (".json", ".jsonl") and f.is_file()
                           and not f.name.endswith(".manifest.json"))
            if not found:
                raise InputError(f"{p}: the folder holds no .json or .jsonl timeline")
            files.extend(found)
        else:
            files.append(p)
    items = []
    for f in files:
        try:
            timelines = read_timelines(f, **read_options)
        except MemflowError as exc:
            items.append((str(f), exc))
            continue
        if line is not None:
            if not 1 <= line <= len(timelines):
                items.append((str(f), InputError(f"{f}: --line {line} does not exist; expected 1 to {len(timelines)}")))
                continue
            timelines = [timelines[line - 1]]
        items.extend((t.source, t) for t in timelines)
    return items


@app.command()
@_errors
def download(
    revision: Optional[str] = typer.Option(None, "--revision", help="KlingTeam/MemFlow revision (branch, tag or commit)."),
    wan_revision: Optional[str] = typer.Option(None, "--wan-revision", help="Wan-AI/Wan2.1-T2V-1.3B revision."),
    verify: bool = typer.Option(False, "--verify", help="Re-hash cached files against the lock file."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    vace: bool = typer.Option(False, "--vace", help="Also fetch the VACE module (for --control/--mask/--reference offline)."),
    vae: str = typer.Option("wan", "--vae", help="Also fetch this decoder's file: wan (always), lightvae, tae or lighttae."),
):
    """Download exactly the weight files inference needs into the Hugging Face cache (resumable)."""
    from memflow_cli import hub
    from memflow_cli.decoders import decoder_spec

    vae = decoder_spec(vae).kind
    if hub.offline_from_env():
        raise hub.DownloadError("HF_HUB_OFFLINE is set: downloading is disabled; unset it to download")
    from memflow_cli.progress import plan_table

    show = None if quiet else (lambda plan: err.print(plan_table(plan)))
    paths, lock = hub.download(hub.HFDownloader(hub.hub_cache(), progress=not quiet), revision=revision,
                               wan_revision=wan_revision, verify_hashes=verify, show=show, vae=vae)
    if vace:
        hub.resolve_optional(hub.VACE_FILE, "--vace", downloader=hub.HFDownloader(hub.hub_cache(), progress=not quiet),
                             verify_hashes=verify)
        lock = hub.read_lock(hub.lock_path()) or lock
    if not quiet:
        err.print(f"[green]done[/green]: {len(lock['files'])} files in {hub.hub_cache()}; lock file {hub.lock_path()}")


@app.command()
@_errors
def info(
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="Describe this weights folder instead of the HF cache."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
):
    """Versions, device, GPU, attention backend, and which weight files are present."""
    import platform

    import huggingface_hub
    import imageio_ffmpeg
    import torch

    from memflow_cli import hub
    from memflow_cli.model.dit import attention_backend

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
        "weights": str(weights_dir) if weights_dir else str(hub.hub_cache()),
        "files": [
            {"repo": f.repo, "file": f.filename, "present": path is not None, "size": size,
             "path": str(path) if path else None, "required": f.required}
            for f, path, size in hub.presence(weights_dir)
        ],
        "decoders": [
            {"vae": kind, "repo": f.repo, "file": f.filename, "present": path is not None,
             "path": str(path) if path else None}
            for kind, f, path in hub.decoder_presence(weights_dir)
        ],
    }
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from rich.table import Table

    t = Table(show_header=False, title="memflow info")
    t.add_column(style="bold")
    t.add_column()
    for key in ("memflow_cli", "python", "torch", "cuda", "huggingface_hub", "ffmpeg", "device", "gpu", "attention", "weights"):
        t.add_row(key, str(data[key]))
    if data["gpu_memory_bytes"]:
        t.add_row("gpu memory", f"{data['gpu_memory_bytes'] / 2**30:.1f} GiB")
    out.print(t)
    files = Table(title="weight files")
    for col in ("file", "size", "status"):
        files.add_column(col)
    for f in data["files"]:
        status = "[green]present[/green]" if f["present"] else ("[red]missing[/red]" if f["required"] else "[dim]missing (optional)[/dim]")
        files.add_row(f"{f['repo']}/{f['file']}", hub.human_size(f["size"]) if f["present"] else "", status)
    out.print(files)
    decoders = Table(title="decoders (--vae)")
    for col in ("--vae", "file", "status"):
        decoders.add_column(col)
    for d in data["decoders"]:
        status = "[green]present[/green]" if d["present"] else f"[dim]missing: memflow download --vae {d['vae']}[/dim]"
        decoders.add_row(d["vae"], f"{d['repo']}/{d['file']}", status)
    out.print(decoders)


@app.command()
@_errors
def bench(
    preset: str = typer.Option("wan2.1-t2v-1.3b", help="DiT size: wan2.1-t2v-1.3b (full) or tiny (CPU smoke run)."),
    resolution: str = typer.Option("832x480", "--resolution", help="WIDTHxHEIGHT, multiples of 16."),
    chunks: int = typer.Option(20, min=2, help="Chunks to stream (12 video frames each after the first)."),
    steps: int = typer.Option(4, min=1, help="Denoising steps per chunk."),
    switch_every: int = typer.Option(10, min=0, help="Chunks between prompt switches (each runs a KV re-cache); 0 = none."),
    sma: bool = typer.Option(False, "--sma/--no-sma", help="Sparse memory activation."),
    vae_dim: int = typer.Option(96, help="VAE width: 96 is the real Wan2.1 VAE; smaller for CPU smoke runs."),
    no_video: bool = typer.Option(False, "--no-video", help="Skip the H.264 encode stage."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Skip the comparison run without the memory bank."),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, help="bfloat16, float16 or float32 (default: bfloat16 on cuda)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Also write the JSON report into this folder (e.g. benchmarks/results)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    vae: str = typer.Option("wan", "--vae", help="Decoder to time: wan, lightvae, tae or lighttae."),
):
    """Measure speed stage by stage with random full-size weights (nothing to download)."""
    from memflow_cli.decoders import decoder_spec

    from memflow_cli.bench import BenchOptions, report_table, run_bench, save_report
    from memflow_cli.render import DTYPES

    width, height = parse_resolution(resolution)
    defaults = BenchOptions()
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    opts = BenchOptions(preset=preset, width=width, height=height, chunks=chunks, steps=steps, switch_every=switch_every,
                        sma=sma, vae_dim=vae_dim, encode_video=not no_video, compare_without_memory=not no_baseline,
                        device=device or defaults.device, dtype=dtype or defaults.dtype, vae=decoder_spec(vae).kind)
    try:
        report = run_bench(opts)
    except (KeyError, ValueError) as exc:
        raise InputError(f"bench: {exc}") from None
    if save is not None:
        err.print(f"saved {save_report(report, save, ' '.join(['memflow', *sys.argv[1:]]))}")
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        out.print(report_table(report))


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        print(__version__)
        raise typer.Exit(0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
