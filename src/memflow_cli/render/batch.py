"""A batch: many timelines through one loaded pipeline.

Every item is planned first (a bad one is reported, the others go on); outputs that collide, or that would
overwrite any input of the batch, are refused; items already rendered are skipped; the prompts of every item
to render are encoded up front (before the DiT loads); items stream grouped by model, so each model's DiT loads
once. Ctrl-C stops the whole batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from memflow_cli.errors import InputError, MemflowError
from memflow_cli.inputs.timeline import Timeline
from memflow_cli.render.job import BatchResult, Interrupted, RenderJob, job_inputs
from memflow_cli.render.video import check_output_path

if TYPE_CHECKING:
    from memflow_cli.render.pipeline import Pipeline

Items = Sequence[tuple[str, "Timeline | MemflowError"]]


def render_batch(pipeline: "Pipeline", items: Items) -> list[BatchResult]:
    """Render every item; a bad or failing item is reported and the others go on.

    `items` are (name, timeline) pairs, or (name, error) for an input that could not be read. Every
    item is planned first; the prompts of all items to render are encoded up front; then the items
    stream one after another through the same loaded weights. Ctrl-C stops the whole batch.
    """
    results: list[BatchResult | None] = [None] * len(items)
    jobs = plan_items(pipeline, items, results)
    check_batch_outputs(items, [job for _, job in jobs])
    todo = _to_render(pipeline, jobs, results)
    if todo is None:
        return results  # type: ignore[return-value]
    # Grouped by model (in order of first appearance), so that each model's DiT loads once.
    first_seen = {m: n for n, m in reversed(list(enumerate(job.model for _, job in todo)))}
    todo.sort(key=lambda item: first_seen[item[1].model])
    if todo and not _prepare(pipeline, todo, results):
        return results  # type: ignore[return-value]
    _stream_items(pipeline, todo, results)
    return results  # type: ignore[return-value]


def plan_items(pipeline: "Pipeline", items: Items, results: list) -> list[tuple[int, RenderJob]]:
    """Plan every readable item (no weights); failures go to `results`. Two items may not share an output."""
    jobs: list[tuple[int, RenderJob]] = []
    outputs: dict[Path, str] = {}
    for i, (name, item) in enumerate(items):
        if isinstance(item, MemflowError):
            results[i] = BatchResult(name, "failed", message=str(item), exit_code=item.exit_code)
            continue
        try:
            job = pipeline.plan(item)
        except MemflowError as exc:
            results[i] = BatchResult(name, "failed", message=str(exc), exit_code=exc.exit_code)
            continue
        key = job.output.resolve()
        if key in outputs:
            results[i] = BatchResult(name, "failed", str(job.output), exit_code=InputError.exit_code,
                                     message=f"same output as {outputs[key]}; give the items different names")
            continue
        outputs[key] = name
        jobs.append((i, job))
    return jobs


def check_batch_outputs(items: Items, jobs: Sequence[RenderJob]) -> None:
    """The single-render rule for the whole batch: no file any item writes (video, manifest, partial file,
    checkpoint, lock, sheet) may be a file any item reads (each item's timeline, also one that failed to read,
    and its LoRAs). Raises InputError (exit 2) before anything renders: the batch is refused as a whole."""
    inputs: list[Path] = []
    for name, _ in items:
        path = Path(str(name).rsplit(" line ", 1)[0])
        if path.exists():
            inputs.append(path)
    for job in jobs:
        inputs.extend(job_inputs(job.timeline))
        inputs.extend(lora.file.path for lora in job.loras or ())
    for job in jobs:
        check_output_path(job.output, inputs=inputs)


def _to_render(pipeline: "Pipeline", jobs, results) -> list | None:
    """The jobs not already rendered (those are skipped); None when the weights themselves are broken."""
    todo = []
    for i, job in jobs:
        try:
            if not pipeline.options.overwrite and job.output.exists() and pipeline.already_rendered(job):
                results[i] = BatchResult(job.name, "skipped", str(job.output), message="already rendered")
                continue
        except MemflowError as exc:  # the weights themselves are missing or broken: nothing can render
            for k, j in jobs:
                results[k] = results[k] or BatchResult(j.name, "failed", str(j.output), message=str(exc),
                                                       exit_code=exc.exit_code)
            return None
        todo.append((i, job))
    return todo


def _prepare(pipeline: "Pipeline", todo, results) -> bool:
    """The memory check and every prompt of the batch encoded, before any DiT loads; False if that failed."""
    pipeline.use(todo[0][1].model)
    try:
        pipeline.check_memory(todo[0][1])
        pipeline._quantization = todo[0][1].quantization
        pipeline.encode_prompts([t for _, job in todo for t in job.timeline.texts])
    except MemflowError as exc:
        for i, job in todo:
            results[i] = BatchResult(job.name, "failed", str(job.output), message=str(exc), exit_code=exc.exit_code)
        return False
    return True


def _stream_items(pipeline: "Pipeline", todo, results) -> None:
    for n, (i, job) in enumerate(todo):
        pipeline.reporter.item(n, len(todo), job.name)
        try:
            summary = pipeline.render(job)
        except Interrupted as exc:
            results[i] = BatchResult(job.name, "interrupted", exc.summary.output if exc.summary else None,
                                     exc.summary, str(exc), exc.exit_code)
            for k, j in todo[n + 1:]:
                results[k] = BatchResult(j.name, "not started", str(j.output), message="the batch was interrupted",
                                         exit_code=exc.exit_code)
            break
        except MemflowError as exc:
            results[i] = BatchResult(job.name, "failed", str(job.output), message=str(exc), exit_code=exc.exit_code)
            continue
        except Exception as exc:  # noqa: BLE001 — one broken item must not sink the batch
            results[i] = BatchResult(job.name, "failed", str(job.output), exit_code=1,
                                     message=f"{type(exc).__name__}: {exc}")
            continue
        results[i] = BatchResult(job.name, "skipped" if summary.skipped else "done", summary.output, summary,
                                 "already rendered" if summary.skipped else "")
