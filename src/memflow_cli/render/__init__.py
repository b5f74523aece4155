"""The render layer: planning a job, the pipeline (parts loaded once), the stream of one job (one chunk loop,
serial or overlapped), batches and torchrun, resume, publishing the video and its manifest, progress, bench.

The names below are what the commands and Python programs use; the modules import each other directly.
"""

from memflow_cli.render.job import (DTYPES, BatchResult, Interrupted, RenderJob, RenderOptions, RenderSummary,
                                    batch_exit_code, plan_job)
from memflow_cli.render.pipeline import Pipeline, Renderer, render

__all__ = ["DTYPES", "BatchResult", "Interrupted", "Pipeline", "RenderJob", "RenderOptions", "RenderSummary",
           "Renderer", "batch_exit_code", "plan_job", "render"]
