"""memflow-cli: render MemFlow long videos offline, from a timeline of prompts to an mp4.

The data flows one way, and the folders say so: cli → render (plan a job, load a pipeline once, stream each
job) → inputs (timeline → schedule → conditioning) and weights (hub, checkpoints, LoRAs) → engine (streaming
generator with its KV cache and memory bank → decoder) → model (the pure modules).

The public face, stable across moves inside the package:

    import memflow_cli
    pipe = memflow_cli.load(weights_dir="weights")            # parts resolved (downloaded on first use)
    summary = pipe.render(memflow_cli.Timeline.read("timeline.json"))
    print(summary.output, summary.fps_generation)

plus `RenderOptions` (every knob of a render), `StreamingGenerator` and `StreamSettings` (the chunk-by-chunk
generator on a loaded DiT), `Pipeline`, `RenderSummary` and `MemflowError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> module: imported on first use, so that `import memflow_cli` stays light and imports nothing circular
_EXPORTS = {
    "Pipeline": "memflow_cli.render.pipeline",
    "RenderOptions": "memflow_cli.render.job",
    "RenderSummary": "memflow_cli.render.job",
    "Timeline": "memflow_cli.inputs.timeline",
    "StreamingGenerator": "memflow_cli.engine.generator",
    "StreamSettings": "memflow_cli.engine.generator",
    "MemflowError": "memflow_cli.errors",
}

__all__ = ["load", "__version__", *_EXPORTS]

if TYPE_CHECKING:
    from memflow_cli.engine.generator import StreamingGenerator, StreamSettings
    from memflow_cli.errors import MemflowError
    from memflow_cli.inputs.timeline import Timeline
    from memflow_cli.render.job import RenderOptions, RenderSummary
    from memflow_cli.render.pipeline import Pipeline


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'memflow_cli' has no attribute {name!r}")


def load(model: str = "memflow", *, weights_dir=None, device: str | None = None, dtype: str | None = None,
         offline: bool = False, options: "RenderOptions | None" = None, reporter=None, **settings) -> "Pipeline":
    """A pipeline for `model` ("memflow", "longlive", ...), its weight files found (downloaded on first use and
    verified, with progress on the terminal), ready to `render(timeline)` many times.

    `settings` are further RenderOptions fields (seed, width, height, vae, quantization, compile, loras, ...);
    `options` gives them all at once. Nothing heavy loads until the first render: the text encoder, the DiT
    and the decoder load then, once, and stay for the next renders.
    """
    import dataclasses
    from pathlib import Path

    from memflow_cli.render.job import RenderOptions
    from memflow_cli.render.pipeline import Pipeline
    from memflow_cli.weights.models import choose_model

    base = options or RenderOptions()
    known = {f.name for f in dataclasses.fields(RenderOptions)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"load() got unknown setting(s) {', '.join(unknown)}; see memflow_cli.RenderOptions")
    model = choose_model(model, None).name  # an unknown name fails here, naming the known ones
    weights_dir = Path(weights_dir) if weights_dir is not None else None
    chosen = dataclasses.replace(base, model=model, offline=offline or base.offline, **settings,
                                 **{k: v for k, v in (("weights_dir", weights_dir), ("device", device),
                                                       ("dtype", dtype)) if v is not None})
    pipeline = Pipeline(chosen, reporter)
    pipeline.use(model)
    pipeline.weights  # resolve (and on first use download and verify) the files now, not mid-render
    return pipeline
