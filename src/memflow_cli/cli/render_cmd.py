"""`memflow render`: timelines (or --prompt) to mp4s, single, batch or under torchrun."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from memflow_cli.errors import InputError, MemflowError, counted
from memflow_cli.cli.app import (_Command, _errors, app, DTYPE_HELP, err, out, parse_compile_mode, parse_ints,
                                parse_overlap_option, parse_quantization_option, parse_resolution, parse_steps)


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
    from memflow_cli.render.manifest import command_line, read_manifest
    from memflow_cli.inputs.option_checks import check_input_options, switch_frame_warnings
    from memflow_cli.render.progress import reporter_for, summary_table
    from memflow_cli.render import RenderOptions, Renderer
    from memflow_cli.render.distributed import world_from_env
    from memflow_cli.inputs.timeline import prompt_timeline

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
        from memflow_cli.weights.models import get_model

        model = get_model(model).name  # an unknown name fails here, before any file is read
    if revision is not None:  # every MODEL=REV is checked (a commit hash or a safe ref name) before any file is read
        from memflow_cli.weights.models import MODELS, revision_for

        for name in MODELS:
            revision_for(revision, name)
    given = {"--seconds": seconds, "--segment-seconds": segment_seconds, "--switch-frames": switch_frames,
             "--latent-frames": latent_frames, "--line": line}

    from memflow_cli.weights.hub import check_folder_option
    from memflow_cli.weights.loras import lora_search_dirs, parse_lora_option
    from memflow_cli.inputs.timeline import LoraSpec

    for folder in lora_dir:  # (--weights-dir is checked where the weights are looked up: after the inputs)
        check_folder_option(folder.expanduser(), "--lora-dir")

    extra_loras = tuple(LoraSpec(*parse_lora_option(text), where=f"--lora {text}") for text in lora)
    if prompt is not None:
        check_input_options({"prompt"}, "--prompt", given)
        if video is not None:  # video-to-video from a prompt: the output is as long as the input
            from memflow_cli.inputs.video_source import FPS, probe_video

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
    from memflow_cli.render.progress import batch_table
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
    from memflow_cli.render import distributed
    from memflow_cli.render.progress import Reporter
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
    from memflow_cli.inputs.timeline import read_timelines

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
