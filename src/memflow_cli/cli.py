"""`memflow render | download | info | bench | sheet`: a thin Typer layer over render.py, hub.py and bench.py.

Options are parsed here and handed on; every error the user can act on is a MemflowError that is printed
as one message (no traceback) and becomes the exit code (2 for bad input, 130 after Ctrl-C).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from memflow_cli import __version__
from memflow_cli.errors import InputError, MemflowError, counted

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
        from memflow_cli.signals import exit_code_of, stop_on_signals

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


def parse_overlap_option(text: str | None, off: bool) -> str:
    """--overlap auto|on|off, with --no-overlap as the alias of off (both at once must agree)."""
    from memflow_cli.decode_stage import OVERLAP_MODES

    mode = None if text is None else text.strip().lower()
    if mode is not None and mode not in OVERLAP_MODES:
        raise InputError(f"--overlap: expected one of {', '.join(OVERLAP_MODES)}, got {text!r}")
    if off and mode not in (None, "off"):
        raise InputError(f"--no-overlap contradicts --overlap {mode}; give one of them")
    return "off" if off else (mode or "auto")


def parse_compile_mode(text: str | None) -> str | None:
    from memflow_cli.compiled import COMPILE_MODES

    if text is not None and text not in COMPILE_MODES:
        raise InputError(f"--compile-mode: expected one of {', '.join(COMPILE_MODES)}, got {text!r}")
    return text


def parse_quantization_option(text: str | None) -> str | None:
    from memflow_cli.quantization import parse_quantization

    try:
        return parse_quantization(text, "--quantization")
    except ValueError as exc:
        raise InputError(str(exc)) from None


@app.command(cls=_Command)
@_errors
def render(
    timelines: Optional[List[Path]] = typer.Argument(None, metavar="TIMELINE", help="Scope timeline / workflow JSON or MemFlow prompt-list JSONL files, or folders of them (a batch)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Render a single prompt instead of a file."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Duration for --prompt (default 10; with --video the video's length)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output .mp4 (default: the timeline's name, or <prompt words>-<seed>.mp4 made unique for --prompt)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Folder for the outputs of a batch (created if missing)."),
    overwrite: bool = typer.Option(False, "--overwrite", "-y", "--force", help="Replace existing outputs (and re-render finished batch items)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default: the file's, else 1)."),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="WIDTHxHEIGHT, multiples of 16 (default 832x480)."),
    sma: Optional[bool] = typer.Option(None, "--sma/--no-sma", help="Sparse memory activation (default off)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Denoising steps, e.g. 1000,750,500,250."),
    blend: str = typer.Option("linear", "--blend", help="Blend of a block's two prompts: linear or slerp."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda if available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=DTYPE_HELP),
    weights_dir: Optional[Path] = typer.Option(None, "--weights-dir", help="A weights folder instead of the HF cache."),
    offline: bool = typer.Option(False, "--offline", help="Never download; use cached weights only."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Revision of the model's repository: REV, or MODEL=REV[,MODEL=REV] for a batch of both."),
    segment_seconds: Optional[float] = typer.Option(None, "--segment-seconds", help="Prompt-list JSONL: seconds per prompt (default 10)."),
    switch_frames: Optional[str] = typer.Option(None, "--switch-frames", help="Prompt-list JSONL: switch points in latent frames, e.g. 40,80,120,160,200."),
    latent_frames: Optional[int] = typer.Option(None, "--latent-frames", help="With --switch-frames: total latent frames (default 240)."),
    line: Optional[int] = typer.Option(None, "--line", help="Prompt-list JSONL: render only this line (1-based)."),
    lora_dir: List[Path] = typer.Option([], "--lora-dir", metavar="<path>", help="Folder to find a timeline's LoRA files by name (repeatable; then $MEMFLOW_LORA_DIR)."),
    verify: bool = typer.Option(False, "--verify", help="Check weight files against their recorded sha256."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or table."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (the manifest's key names)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted render from its NAME.resume/ checkpoint."),
    checkpoint_every: float = typer.Option(300.0, "--checkpoint-every", help="Seconds between resume checkpoints (0 = only when stopped by a signal)."),
    max_hours: float = typer.Option(24.0, "--max-hours", help="Refuse timelines longer than this many hours of video."),
    control: Optional[Path] = typer.Option(None, "--control", help="VACE: control video (depth, pose, edges, sketch…) guiding the structure."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="VACE: mask video; white is regenerated, black kept from --control."),
    reference: List[Path] = typer.Option([], "--reference", metavar="<path>", help="VACE: reference image for the subject (repeatable)."),
    vace_scale: Optional[float] = typer.Option(None, "--vace-scale", help="VACE strength, 0 to 2 (default: the file's, else 1.0)."),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="fp8: DiT and text encoder weights in fp8 (about half the memory)."),
    low_vram: bool = typer.Option(False, "--low-vram", help="For 12-16 GB GPUs: text encoder on the CPU, fp8 DiT, smallest decoder working set."),
    video: Optional[Path] = typer.Option(None, "--video", help="Video-to-video: restyle this input video (anything ffmpeg reads, or a folder of images)."),
    strength: Optional[float] = typer.Option(None, "--strength", help="Video-to-video: noise strength in (0, 1]; 1 = text-to-video (default: the file's, else 0.7)."),
    fit: Optional[str] = typer.Option(None, "--fit", help="Video-to-video: crop (default), pad or stretch the input to the output size."),
    noise_controller: Optional[bool] = typer.Option(None, "--noise-controller/--no-noise-controller", help="Video-to-video: motion-adaptive strength (default: the file's noiseController)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="memflow or longlive (default: the file's pipelineId when it is one of ours, else memflow)."),
    lora: List[str] = typer.Option([], "--lora", metavar="<file[:scale]>", help="FILE[:SCALE]: merge this LoRA too, after the timeline's (repeatable; scale 1 if omitted)."),
    vae: Optional[str] = typer.Option(None, "--vae", help="Decoder: wan (default), lightvae, tae or lighttae (default: the timeline's vae_type, else wan)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the DiT (CUDA graphs on CUDA): faster from chunk 7 on, after a one-off compile."),
    compile_mode: Optional[str] = typer.Option(None, "--compile-mode", help="With --compile: default, reduce-overhead (CUDA graphs), max-autotune or max-autotune-no-cudagraphs (default: reduce-overhead on CUDA, default elsewhere)."),
    overlap: Optional[str] = typer.Option(None, "--overlap", metavar="auto|on|off", help="Decode and write each chunk while the next one generates: on, off, or auto (default: on, except that on CUDA the render measures both schedules on its first steady chunks and keeps the faster); off with --low-vram."),
    no_overlap: bool = typer.Option(False, "--no-overlap", help="Same as --overlap off."),
    preview: bool = typer.Option(True, "--preview/--no-preview", help="NAME.partial.mp4 plays while rendering (a fragmented mp4, remuxed into NAME.mp4 at the end)."),
    sheet: bool = typer.Option(True, "--sheet/--no-sheet", help="Write the contact sheet NAME.sheet.png (a labelled tile per timeline block)."),
):
    """Render timelines (or --prompt) to mp4s, each with a manifest next to it.

    Several files or folders make a batch: the weights load once, every item streams in turn, a failing
    item does not stop the rest."""
    from memflow_cli.manifest import command_line, read_manifest
    from memflow_cli.option_checks import check_input_options, switch_frame_warnings
    from memflow_cli.progress import reporter_for, summary_table
    from memflow_cli.render import RenderOptions, Renderer
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
    if model is not None:
        from memflow_cli.models import get_model

        model = get_model(model).name  # an unknown name fails here, before any file is read
    if revision is not None:  # every MODEL=REV is checked (a commit hash or a safe ref name) before any file is read
        from memflow_cli.models import MODELS, revision_for

        for name in MODELS:
            revision_for(revision, name)
    given = {"--seconds": seconds, "--segment-seconds": segment_seconds, "--switch-frames": switch_frames,
             "--latent-frames": latent_frames, "--line": line}

    from memflow_cli.hub import check_folder_option
    from memflow_cli.loras import lora_search_dirs, parse_lora_option
    from memflow_cli.timeline import LoraSpec

    for folder in lora_dir:  # (--weights-dir is checked where the weights are looked up: after the inputs)
        check_folder_option(folder.expanduser(), "--lora-dir")

    extra_loras = tuple(LoraSpec(*parse_lora_option(text), where=f"--lora {text}") for text in lora)
    if prompt is not None:
        check_input_options({"prompt"}, "--prompt", given)
        if video is not None:  # video-to-video from a prompt: the output is as long as the input
            from memflow_cli.video_source import FPS, probe_video

            if seconds is not None:
                raise InputError("--seconds: with --video the output is as long as the input video; drop --seconds")
            seconds = probe_video(video).frames / FPS
        items = [("--prompt", prompt_timeline(prompt, 10.0 if seconds is None else seconds))]
    else:
        switch_points = parse_ints(switch_frames, "--switch-frames")
        items = batch_items(paths, line=line, segment_seconds=segment_seconds, lora_dirs=lora_search_dirs(lora_dir),
                            switch_frames=switch_points, num_latent_frames=latent_frames)
        where = ", ".join(str(p) for p in paths) if len(paths) <= 3 else f"each of the {len(paths)} inputs"
        check_input_options({t.format for _, t in items if not isinstance(t, MemflowError)}, where, given)
        moved = tuple(switch_frame_warnings(switch_points))
        items = [(name, replace(t, warnings=t.warnings + moved)
                  if moved and not isinstance(t, MemflowError) and t.format == "memflow-jsonl" else t)
                 for name, t in items]
    if output is not None and len(items) > 1:
        raise InputError(f"-o/--output names one file, but there are {len(items)} items to render; "
                         "use --output-dir DIR for a batch")
    options = RenderOptions(output=output, seed=seed, width=width, height=height, sma=sma,
                            steps=parsed_steps, blend=blend, device=device, dtype=dtype,
                            weights_dir=weights_dir, offline=offline, revision=revision, verify_hashes=verify,
                            output_dir=output_dir, overwrite=overwrite, resume=resume,
                            checkpoint_every=checkpoint_every, max_hours=max_hours,
                            control=control, mask=mask, references=tuple(reference), vace_scale=vace_scale,
                            quantization=parse_quantization_option(quantization), low_vram=low_vram,
                            video=video, strength=strength, fit=fit, noise_controller=noise_controller,
                            command=command_line(), model=model, loras=extra_loras, vae=vae,
                            compile=compile or compile_mode is not None, compile_mode=parse_compile_mode(compile_mode),
                            overlap=parse_overlap_option(overlap, no_overlap), preview=preview, sheet=sheet)
    reporter = reporter_for(err, quiet=quiet)
    world = world_from_env()
    if world is not None:  # under torchrun: this rank renders its share, rank 0 reports for all
        return render_distributed(world, items, options, reporter, as_json=as_json, quiet=quiet)
    if len(items) == 1:  # one render: its errors are the command's errors
        name, item = items[0]
        if isinstance(item, MemflowError):
            raise item
        summary = Renderer(options, reporter).render(item)
        if as_json:  # the manifest itself: one set of key names for files and scripts
            data = read_manifest(summary.manifest) or summary.to_dict()
            print(json.dumps({**data, "manifest": summary.manifest, "skipped": summary.skipped}, indent=2))
        elif not quiet:
            out.print(summary_table(summary))
        return
    results = Renderer(options, reporter).render_batch(items)
    code = report_batch(results, as_json=as_json, quiet=quiet)
    if code:
        raise typer.Exit(code)


def report_batch(results, *, as_json: bool, quiet: bool) -> int:
    """Print a batch's results (JSON or a table) and return its exit code, with a closing line if not 0."""
    from memflow_cli.progress import batch_table
    from memflow_cli.render import batch_exit_code

    if as_json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    elif not quiet:
        out.print(batch_table(results))
    code = batch_exit_code(results)
    if code and quiet and not as_json:  # no table: each item that did not complete still says why, one line each
        from rich.markup import escape

        for r in results:
            if r.status not in ("done", "skipped"):
                err.print(f"[red]{r.status}:[/red] {escape(r.name)}: {escape(r.message or 'no reason given')}",
                          highlight=False, soft_wrap=True)
    if code:
        failed = sum(r.status not in ("done", "skipped") for r in results)
        err.print(f"[red]error:[/red] {failed} of {counted(len(results), 'item')} did not complete", highlight=False)
    return code


def render_distributed(world, items, options, reporter, *, as_json: bool, quiet: bool) -> None:
    from memflow_cli import distributed
    from memflow_cli.progress import Reporter
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
    raise typer.Exit(report_batch(everything, as_json=as_json, quiet=quiet))


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
            timelines = read_timelines(f, line=line, **read_options)  # with --line, only that line is read
        except MemflowError as exc:
            items.append((str(f), exc))
            continue
        items.extend((t.source, t) for t in timelines)
    return items


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
    from memflow_cli import hub
    from memflow_cli.models import get_model

    spec = get_model(model)
    hub.check_revision(revision), hub.check_revision(wan_revision, "--wan-revision")

    from memflow_cli.decoders import decoder_spec

    vae = decoder_spec(vae).kind
    if hub.offline_from_env():
        raise hub.DownloadError("HF_HUB_OFFLINE is set: downloading is disabled; unset it to download")
    from memflow_cli.progress import plan_table

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

    from memflow_cli import hub
    from memflow_cli.model.dit import attention_backend
    from memflow_cli.quantization import describe_fp8_path
    from memflow_cli.prompts import default_cache_dir

    if weights_dir is not None:
        hub.check_folder_option(weights_dir.expanduser(), "--weights-dir")
    plan = None
    if resolution is not None or low_vram or quantization is not None or vae != "wan" or dtype is not None or compile:
        from memflow_cli.memory_plan import plan_memory
        from memflow_cli.render import DTYPES, DEFAULT_HEIGHT, DEFAULT_WIDTH

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

    from memflow_cli.progress import PathCell

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
        from memflow_cli.memory_plan import plan_table as memory_table

        out.print(memory_table(plan))


@app.command(cls=_Command)
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
    dtype: Optional[str] = typer.Option(None, "--dtype", help=DTYPE_HELP),
    save: Optional[Path] = typer.Option(None, "--save", help="Also write the JSON report into this folder (e.g. benchmarks/results)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    video: bool = typer.Option(False, "--video", help="Video-to-video: also time reading and VAE-encoding an input clip per chunk."),
    strength: float = typer.Option(0.7, "--strength", help="With --video: the strength (fewer denoising steps below 1)."),
    vae: str = typer.Option("wan", "--vae", help="Decoder to time: wan, lightvae, tae or lighttae."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the DiT's block (warm-up and compile timed apart)."),
    compile_mode: Optional[str] = typer.Option(None, "--compile-mode", help="With --compile: a torch.compile mode (default: reduce-overhead on CUDA)."),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="fp8: fp8 DiT weights."),
    overlap: bool = typer.Option(True, "--overlap/--no-overlap", help="Decode and write while the next chunk generates (as renders do)."),
    compare_schedules: bool = typer.Option(True, "--compare-schedules/--no-compare-schedules", help="Also a short run in the other schedule: DiT ms with the decoder beside it and alone."),
):
    """Measure speed stage by stage with random full-size weights (nothing to download).

    On a CPU, use --preset tiny --resolution 64x64 --vae-dim 8: the full-size model takes minutes per chunk."""
    from memflow_cli.decoders import decoder_spec

    from memflow_cli.bench import BenchOptions, report_table, run_bench, save_report
    from memflow_cli.progress import BenchProgress
    from memflow_cli.render import DTYPES

    width, height = parse_resolution(resolution)
    defaults = BenchOptions()
    if dtype is not None and dtype not in DTYPES:
        raise InputError(f"--dtype: expected one of bf16, fp16, fp32, got {dtype!r}")
    opts = BenchOptions(preset=preset, width=width, height=height, chunks=chunks, steps=steps, switch_every=switch_every,
                        sma=sma, vae_dim=vae_dim, encode_video=not no_video, compare_without_memory=not no_baseline,
                        device=device or defaults.device, dtype=dtype or defaults.dtype, video=video,
                        strength=strength, vae=decoder_spec(vae).kind, compile=compile or compile_mode is not None,
                        compile_mode=parse_compile_mode(compile_mode), quantization=parse_quantization_option(quantization),
                        overlap=overlap, compare_schedules=compare_schedules)
    if video:
        from memflow_cli.v2v import check_strength

        check_strength(strength)
    try:
        with BenchProgress(err, quiet=as_json and not err.is_terminal) as progress:
            report = run_bench(opts, progress=progress, announce=lambda line: err.print(line, highlight=False, soft_wrap=True))
    except (KeyError, ValueError) as exc:
        raise InputError(f"bench: {exc}") from None
    if save is not None:
        err.print(f"saved {save_report(report, save, ' '.join(['memflow', *sys.argv[1:]]))}")
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        out.print(report_table(report))


@app.command("sheet", cls=_Command)
@_errors
def sheet_command(
    video: Path = typer.Argument(..., help="A rendered video (NAME.mp4 or NAME.partial.mp4)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Its manifest (default: NAME.manifest.json beside the video)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where to write the sheet (default: NAME.sheet.png beside the video)."),
    overwrite: bool = typer.Option(False, "--overwrite", "-y", help="Replace an existing sheet."),
):
    """Make the contact sheet of an existing render: a labelled tile per timeline block (from the manifest)."""
    from memflow_cli.sheet import sheet_for_video, sheet_path

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

    from memflow_cli.loras import FORMAT_NAMES, LoraError, inspect_lora
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

        from memflow_cli.signals import STOP_SIGNALS

        for s in STOP_SIGNALS:
            try:
                signal.signal(s, signal.SIG_IGN)
            except (ValueError, OSError):
                pass
        # A second Ctrl-C left a decode running on its thread (its frames are not written): leave now, as
        # Python's shutdown would end that thread inside a torch op and abort (exit code 134 instead of 130).
        stage = sys.modules.get("memflow_cli.decode_stage")
        if stage is not None and stage.abandoned_decodes_running():
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 — the terminal may be gone
                    pass
            os._exit(code)


if __name__ == "__main__":
    main()
