"""The stream of one job: source → generator → decoder → writer, with resume, stops and publishing.

A `JobStream` is made by `Pipeline.render` for one planned job; its state is its fields (the generator, the
decoder, the writer, the checkpoint recorder, the summary), not arguments passed from method to method. The
chunk loop itself is `chunk_loop.ChunkLoop`, the same one `bench` times.
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from memflow_cli.errors import CheckpointError, InputError
from memflow_cli.inputs.schedule import ChunkPlan
from memflow_cli.inputs.timeline import FPS
from memflow_cli.render.job import Interrupted, RenderJob, RenderSummary, synchronize
from memflow_cli.render.manifest import figures, is_complete_render, read_manifest
from memflow_cli.render.output_names import refusal
from memflow_cli.render.video import VideoWriter, manifest_path, partial_path
from memflow_cli.weights.hub import sha256_file

if TYPE_CHECKING:
    from memflow_cli.render.pipeline import Pipeline

PROBE_SCHEDULE_ON_CPU = False  # --overlap auto measures on CUDA only; tests switch it on for the CPU


class JobStream:
    """One job through a loaded pipeline: `run()` renders it and returns its summary."""

    def __init__(self, pipeline: "Pipeline", job: RenderJob, on_chunk: Callable[[ChunkPlan], None] | None = None,
                 started: float | None = None):
        self.pipeline, self.job, self.on_chunk = pipeline, job, on_chunk
        self.reporter, self.options, self.device = pipeline.reporter, pipeline.options, pipeline.device
        self.started = time.perf_counter() if started is None else started
        self.loaded_at = 0.0  # when the models were loaded: time to first frame counts from here
        self.ident: dict = {}
        self.summary: RenderSummary | None = None
        self.writer = self.recorder = self.stop = self.source = None
        self.compile_before: dict | None = None  # the compiled block's figures when this render began
        self.finishing = 0.0  # when ffmpeg began finishing the file

    # -- the whole job ----------------------------------------------------------------------------------

    def run(self) -> RenderSummary:
        p, job = self.pipeline, self.job
        p.use(job.model)
        if job.loras is None:
            p.check_loras(job)
        for w in job.warnings:
            self.reporter.warn(w)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

        self.ident = p.identity(job)
        self.summary = summary = self._new_summary()
        if not self.options.overwrite and self._skip():
            return summary

        # the memory plan, and the stop when it cannot fit, come before anything loads
        p.check_memory(job, summary)
        checkpoint = self._checkpoint_to_resume()
        self._load_parts()
        parts = self._open_parts()

        from memflow_cli.render.signals import StopRequest, exit_code, exit_code_of, name

        existed = job.output.exists()
        self.stop = StopRequest(lambda signum: self.reporter.warn(
            f"{name(signum)}: stopping after this chunk; the chunks generated are decoded and kept "
            "(Ctrl-C again to stop at once, keeping only what is written)"))
        try:
            self.writer = VideoWriter(job.output, job.width, job.height, FPS, manifest=self._manifest_for,
                                      preview=self.options.preview, sheet=self._contact_sheet(),
                                      fragment_frames=max(c.frames for c in job.schedule.chunks))
            summary.encoder = self.writer.encoder
            with self.writer, self.stop:
                start = self._restore(checkpoint, parts["owners"]) if checkpoint is not None else 0
                from memflow_cli.render.resume import CheckpointRecorder, resume_dir

                self.recorder = CheckpointRecorder(resume_dir(job.output), self.ident, job.width, job.height, FPS,
                                                   self.options.checkpoint_every, resumed=checkpoint)
                self.reporter.start(job.schedule, start, summary.frames)  # after a resume: from where it was
                self._stream(start, **parts)
                if self.stop.requested:
                    raise KeyboardInterrupt  # stopped at a chunk boundary: the writer keeps the partial file
                self.finishing = time.perf_counter()
        except KeyboardInterrupt as exc:
            self.reporter.stop()
            if self.recorder is not None:
                self.recorder.abandon_open_segment()
            self._finish()
            code = exit_code(self.stop.signum) if self.stop.signum is not None else exit_code_of(exc)
            raise self._interrupted(existed, code) from None
        except BaseException:
            if self.recorder is not None:
                self.recorder.abandon_open_segment()  # the last complete checkpoint stays usable
            raise
        self.reporter.stop()
        self.recorder.remove()
        summary.manifest = str(self.writer.manifest)
        stale = partial_path(job.output)
        if stale.exists():  # an earlier interrupted attempt is superseded by this complete file
            stale.unlink()
            manifest_path(stale).unlink(missing_ok=True)
        return summary

    # -- before the first chunk -------------------------------------------------------------------------

    def _load_parts(self) -> None:
        """The encoder, the DiT, the decoder and the VACE blocks; one-off costs are charged to this job."""
        p, job, summary = self.pipeline, self.job, self.summary
        before = dict(p.timings)
        p.load_vace(job)  # finds the VACE module first: a missing one fails before any weight loads
        if p._model is None or p._model_name != job.model:
            p._quantization = job.quantization  # the first job that loads a DiT decides its quantization
        p.encode_prompts(job.timeline.texts)
        p.load(job.quantization, job.loras or (), job.vae)
        self.vace_module = p.load_vace(job)
        self.loaded_at = time.perf_counter()  # time to first frame counts from here
        summary.timings.update({k: p.timings[k] - before[k] for k in before})
        if job.vace is not None:
            self.ident["vace"] = job.vace.manifest()
        summary.prompt_cache = dict(p.prompt_cache)
        stats = p._compile_stats()
        self.compile_before = stats.to_dict() if stats is not None else None

    def _open_parts(self) -> dict:
        """The streaming state of this job: generator, decoder, VACE contexts, the V2V source (owners: what a
        checkpoint carries)."""
        from memflow_cli.engine.generator import StreamingGenerator
        from memflow_cli.inputs.conditioning import Conditioner

        p, job = self.pipeline, self.job
        conditioner = Conditioner({t: p._embeddings[t] for t in job.timeline.texts})
        generator = StreamingGenerator(p._model, job.stream, num_latent_frames=job.schedule.num_latent_frames,
                                       latent_height=job.height // 8, latent_width=job.width // 8, seed=job.seed,
                                       device=self.device, dtype=p.dtype, vace=self.vace_module,
                                       vace_scale=job.vace.inputs.scale if job.vace is not None else 0.0)
        decoder = p._vae.stream_decoder(max_frames_per_call=1 if self.options.low_vram else None)  # smallest
        owners = {"generator": generator, "decoder": decoder}
        contexts = None
        if self.vace_module is not None:  # the VACE context stream: two encoder caches and the input buffers
            contexts = owners["vace"] = job.vace.open(
                p.wan_vae(), num_latent_frames=job.schedule.num_latent_frames, width=job.width, height=job.height,
                frames_per_chunk=job.stream.frames_per_chunk)
        self.source = self._source_latents()
        if self.source is not None:
            owners["encoder"] = self.source.encoder  # video-to-video: the encoder's causal caches
        return {"conditioner": conditioner, "generator": generator, "decoder": decoder, "owners": owners,
                "contexts": contexts}

    def _restore(self, checkpoint, owners) -> int:
        """Put the checkpoint's state back and its frames into the new file; returns the chunk to go on from."""
        t = time.perf_counter()
        summary = self.summary
        checkpoint.restore(owners, self.device)
        for frame in checkpoint.frames_written(self.job.width, self.job.height):
            self.writer.write(frame)
            summary.frames += 1
        if summary.frames != checkpoint.frames:
            from memflow_cli.render.resume import ResumeError

            raise ResumeError(f"{checkpoint.folder}: holds {summary.frames} frames, its record says "
                              f"{checkpoint.frames}; remove it (or render with -y) to start over")
        summary.timings["resume"] = time.perf_counter() - t
        self.reporter.stage(f"resumed at frame {summary.frames} of {summary.total_frames}: continuing with "
                            f"chunk {checkpoint.chunk + 1} of {self.job.schedule.num_chunks}")  # 1-based, as the progress
        return checkpoint.chunk

    def _checkpoint_to_resume(self):
        """The checkpoint to continue from (--resume), after checking it is this render's and intact."""
        from memflow_cli.render.resume import Checkpoint, clean_stale, is_incomplete, read_meta, resume_dir

        job, ident = self.job, self.ident
        folder = resume_dir(job.output)
        clean_stale(folder)  # what a killed render left beside it (never a live one's)
        if folder.is_dir() and is_incomplete(folder):  # no checkpoint: what a failed render of an older version left
            self.reporter.warn(f"{folder}: an incomplete checkpoint left by a failed render (no readable meta.json); "
                               "removed it")
            shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            if self.options.resume:
                self.reporter.warn(f"--resume: no checkpoint at {folder}; rendering from the start")
            return None
        if self.options.resume:
            checkpoint = Checkpoint.load(folder, ident["fingerprint"], ident["settings"], ident["input"].get("sha256"))
            checkpoint.check_position(job.schedule.num_chunks, job.schedule.total_frames)
            return checkpoint
        if not self.options.overwrite:
            meta = read_meta(folder)
            if meta is None:
                raise InputError(f"{folder}: exists and is not a memflow checkpoint (files of another kind in it); "
                                 "move it away or choose another output name with -o")
            if meta.get("fingerprint") != ident["fingerprint"]:
                from memflow_cli.render.resume import _difference

                of = meta.get("input") or "another input"
                raise InputError(f"{folder}: holds an interrupted render of {of} that this render cannot continue "
                                 f"({_difference(meta, ident['settings'], ident['input'].get('sha256'))}); render it "
                                 "again with its own input and settings and --resume to finish it, choose another "
                                 "output name with -o, or -y/--overwrite to discard it")
            raise InputError(f"{folder}: an interrupted render of {job.output} can be continued; add --resume to "
                             "continue it, or -y/--overwrite to start over")
        shutil.rmtree(folder, ignore_errors=True)
        return None

    def _source_latents(self):
        """Video-to-video: the input video's chunks through the streaming VAE encoder (None for text-to-video)."""
        job, p = self.job, self.pipeline
        if job.video is None:
            return None
        from memflow_cli.inputs.v2v import SourceLatents

        try:
            encoder = p._vae.stream_encoder()
        except RuntimeError:
            raise CheckpointError(f"{p.weights.vae}: this VAE file has no encoder weights; video-to-video "
                                  "needs the full Wan2.1_VAE.pth") from None
        v = job.video
        self.reporter.stage(f"video-to-video: {v.info.describe()}; {v.info.uses(v.frames)}, fit {v.fit}, strength "
                            f"{v.strength:g}" + (" with the noise controller" if v.noise_controller else ""))
        timings = self.summary.timings
        timings.update(read=0.0, vae_encode=0.0)
        sync = lambda: synchronize(self.device)  # noqa: E731
        if p.overlap and self.device.type == "cuda":  # the loop's stream only: never wait for the decode stream
            sync = lambda: torch.cuda.current_stream(self.device).synchronize()  # noqa: E731
        return SourceLatents(job.video, job.width, job.height, encoder, timings=timings, device=self.device,
                             synchronize=sync)

    # -- the chunks --------------------------------------------------------------------------------------

    def _stream(self, start: int, *, conditioner, generator, decoder, owners, contexts) -> None:
        """The chunk loop from chunk `start`; decode + write on the stage, beside the next chunk or after each
        one (the schedule: overlap, serial, or measured with --overlap auto on CUDA).

        Between chunks a checkpoint is saved when one is due or a stop was requested (the stage is drained
        first: the decoder's state, the frames written and the count agree); after a requested stop the loop
        ends there. summary.frames and the progress count frames written.
        """
        from memflow_cli.engine.decode_stage import DecodeStage, SerialSchedule, StreamLaps, overlap_mode
        from memflow_cli.render.chunk_loop import ChunkLoop

        job, summary, stop, recorder = self.job, self.summary, self.stop, self.recorder
        timings = summary.timings
        overlap = self.pipeline.overlap
        summary.schedule = {"overlap": overlap_mode(self.options.overlap),
                            "chosen": "overlap" if overlap else "serial", "measured": False}

        def written(item) -> None:  # in this thread, in order, as the stage reports chunks written
            timings.setdefault("first_frame", item.at - self.loaded_at)  # models loaded → first frame written
            timings["decode"] += item.decode_s
            timings["write"] += item.write_s
            summary.frames += item.frames
            self.reporter.chunk(item.tag, summary.frames, summary.frames / max(timings["generate"], 1e-9))

        def lap(stage: str, seconds: float) -> None:
            timings["generate"] += seconds

        stage = DecodeStage(decoder, (self.writer.write, recorder.write), self.device, on_written=written)
        probe = self._schedule_probe(stage) if overlap else None
        if overlap:
            timings["queue_wait"] = 0.0  # the loop blocked on the decode/write stage: back-pressure and drains
        inputs = self.source.iterate(start) if self.source is not None else None
        loop = ChunkLoop(generator, conditioner, stage, StreamLaps(self.device), contexts=contexts, inputs=inputs,
                         schedule=probe if overlap else SerialSchedule(), on_lap=lap)

        def between(chunk, last: bool) -> bool:
            if overlap:
                timings["queue_wait"] = stage.waited
            if stop.requested or recorder.due():
                stage.drain()  # the decoder's caches and the frames written catch up with the generator
                loop.collect_laps(wait=True)
                recorder.save(owners, chunk.index + 1, summary.frames, timings)
                timings["checkpoint"] = recorder.seconds
            return stop.requested

        try:
            with stage:
                try:
                    loop.run(job.schedule.chunks[start:], on_chunk=self.on_chunk, between=between,
                             last_index=job.schedule.num_chunks - 1)
                except KeyboardInterrupt:
                    if stop.requested:  # a second Ctrl-C while stopping: at once; what is written is kept
                        stage.abandon()
                    raise
        finally:
            if overlap:
                timings["queue_wait"] = stage.waited
            if probe is not None:
                summary.schedule = probe.report()
            try:
                loop.collect_laps(wait=True)  # after a drain the device is already past these events
            except RuntimeError:  # a failed device: the error that ended the render is the one to see
                pass

    def _schedule_probe(self, stage):
        """--overlap auto on CUDA: a ScheduleProbe that measures both schedules (None: overlap as asked)."""
        from memflow_cli.engine import decode_stage

        if decode_stage.overlap_mode(self.options.overlap) != "auto" or not (
                self.device.type == "cuda" or PROBE_SCHEDULE_ON_CPU):
            return None
        return decode_stage.ScheduleProbe(stage.drain, on_decided=lambda probe: self.reporter.stage(probe.describe()))

    def _contact_sheet(self):
        """The contact sheet the writer keeps up to date (None with --no-sheet)."""
        if not self.options.sheet:
            return None
        from memflow_cli.render.sheet import ContactSheet, sheet_path

        job = self.job
        return ContactSheet.for_timeline(job.timeline, job.schedule.total_frames, job.width, job.height,
                                         title=f"{job.output.name} · seed {job.seed}",
                                         live=sheet_path(partial_path(job.output)), temp_for=partial_path(job.output))

    # -- publishing and the summary -----------------------------------------------------------------------

    def _manifest_for(self, path: Path, complete: bool | None) -> dict:
        """The manifest of the file about to be published; the writer publishes both as one step.
        None: the preview file that is still growing (frames and sha256 are not known yet)."""
        job, summary, writer = self.job, self.summary, self.writer
        if complete is None:
            return {**self.ident, "video": {"path": str(path), "complete": False, "in_progress": True, "frames": None,
                                            "sha256": None, "fps": FPS, "width": job.width, "height": job.height,
                                            "encoder": writer.encoder, "codec": "h264", "pix_fmt": "yuv420p"}}
        if writer.remux_seconds is not None:
            summary.timings["remux"] = writer.remux_seconds
        if complete:
            self.reporter.stop()
            summary.timings["write"] += time.perf_counter() - self.finishing  # ffmpeg finishing (+faststart)
        summary.complete, summary.output = complete, str(path)
        self._finish()
        summary.sha256 = sha256_file(writer.tmp)  # ffmpeg has finished the file; it is published next
        if self.source is not None:
            self.ident["input"]["video"]["chunk_strengths"] = [round(v, 6) for v in self.source.strengths]
        return {**self.ident, **figures(summary)}

    def _interrupted(self, existed: bool, code: int) -> Interrupted:
        """Say exactly what an interrupted render kept (the exit code is 128 + the signal)."""
        job, writer, recorder, summary = self.job, self.writer, self.recorder, self.summary
        what = "stopped"  # by Ctrl-C or a signal: the user's choice, said plainly (not as an error)
        old = f"; the existing {job.output} was left untouched" if existed else ""
        published = getattr(writer, "published", None)
        if published == job.output:  # the signal came while the finished video was being put in place
            summary.complete, summary.output, summary.manifest = True, str(job.output), str(writer.manifest)
            return Interrupted(f"{what} after the video was complete: kept {job.output} and {writer.manifest}",
                               summary, code)
        if writer is None or writer.partial is None:
            return Interrupted(f"{what} before a frame was complete: nothing was written{old}", summary, code)
        summary.output, summary.manifest = str(writer.partial), str(writer.manifest)
        kept = f"kept {writer.partial} and its manifest {writer.manifest}"
        if recorder is not None and recorder.saves:
            kept += f", and a checkpoint in {recorder.folder} (add --resume to the same command to continue)"
        return Interrupted(f"{what} after {summary.frames} of {summary.total_frames} frames; {kept}{old}", summary, code)

    def _new_summary(self) -> RenderSummary:
        job, s = self.job, self.ident["settings"]
        return RenderSummary(str(job.output), False, 0, job.schedule.total_frames, 0.0, job.schedule.num_chunks,
                             job.width, job.height, job.seed, s["device"], s["dtype"], s["attention"],
                             {"load": 0.0, "encode": 0.0, "generate": 0.0, "decode": 0.0, "write": 0.0},
                             warnings=list(job.warnings), model=job.model, vae=job.vae)

    def _skip(self) -> bool:
        """The overwrite rule (one rule for single renders and batches; -y/--overwrite/--force lifts it):
        an output that already is this exact render is skipped; any other existing output is refused."""
        job, summary = self.job, self.summary
        if not job.output.exists():
            return False
        if is_complete_render(job.output, read_manifest(manifest_path(job.output)), self.ident["fingerprint"]):
            summary.skipped = summary.complete = True
            summary.frames = job.schedule.total_frames
            summary.manifest = str(manifest_path(job.output))
            self._finish()
            summary.fps_end_to_end = summary.fps_generation = 0.0
            self.reporter.stage(f"{job.output} is already this render (same input, settings and weights): skipped; "
                                "-y/--overwrite renders it again")
            return True
        raise InputError(refusal(job.output))

    def _finish(self) -> None:
        summary = self.summary
        total = time.perf_counter() - self.started
        summary.timings["total"] = total
        summary.seconds = summary.frames / FPS
        summary.fps_end_to_end = summary.frames / total if total > 0 else 0.0
        gen = summary.timings.get("generate", 0.0)
        compiled = self._compile_figures()
        if compiled is not None:  # compiling is a one-off: reported apart from the generation rate
            decoder = getattr(getattr(self.pipeline._vae, "module", None), "compiled_decoder", None)
            if decoder is not None:  # the decoder's steady calls (decoders.compile_decoder); in decode time
                compiled["decoder"] = decoder.stats.to_dict()
            summary.compile = compiled
            summary.timings["compile"] = compiled["compile_seconds"]
            gen = max(gen - compiled["compile_seconds"], 0.0)
        summary.fps_generation = summary.frames / gen if gen > 0 else 0.0
        if self.device.type == "cuda":
            summary.peak_gpu_memory_bytes = torch.cuda.max_memory_allocated(self.device)
        # ru_maxrss is KiB on Linux, bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        summary.peak_rss_bytes = rss if sys.platform == "darwin" else rss * 1024

    def _compile_figures(self) -> dict | None:
        """--compile: this render's share of the compiled block's figures (a batch compiles once)."""
        stats = self.pipeline._compile_stats()
        if stats is None:
            return None
        before = self.compile_before or {}
        now = stats.to_dict()
        counts = ("compiled_calls", "compile_seconds", "compilations")
        return {**now, **{k: round(now[k] - before.get(k, 0), 3) for k in counts}}
