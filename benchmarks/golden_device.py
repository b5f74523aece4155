"""The golden cases (tests/golden/) on any device: float32 must pass every case's tolerance, bf16 is measured.

    PYTHONPATH=src python benchmarks/golden_device.py --device cuda --out results/golden.json
    PYTHONPATH=src python benchmarks/golden_device.py --device cpu --dtypes fp32 --cases B1,E

The CPU suite (tests/test_golden.py) runs the runners in tests/golden_*.py, which build everything on the
CPU. This script drives the same cases through the same loaders and the same comparison rule
(tests/golden_metric.py), with the device and the compute dtype as parameters:

  - float32: every expected tensor of every case must be within the case's tolerance (rel-L2 and max-abs),
    and the structural checks of the CPU suite hold (pipeline traces: re-caches, key frames per pass, bank
    contents; VACE at scale 0 is bit-identical to no VACE). TF32 is switched off: the goldens are float32.
  - bf16: the same cases, weights and inputs rounded to bf16, every tensor's rel-L2 / max-abs against the
    float32 golden is reported, with no pass/fail threshold (the goldens are not bf16 results). Whether the
    pipeline's discrete decisions (bank slots, SMA picks) stayed those of the golden is reported too.

The pipeline cases inject the golden's own noise and re-noising draws: on CUDA the generator's per-chunk draws
are a different random stream than the reference's single CPU draw (see generator.py), on the CPU injecting
them gives the same numbers as drawing them.

`--compile` runs the pipeline cases' DiT through the project's compile helper, when the tree has one (found by
name, see `_compile_helper`); without one the cases run eagerly and the JSON says so.

Writes one JSON (`--out`): per case pass/fail (float32), the worst rel-L2 / max-abs per dtype, every tensor's
figures, seconds per dtype, and any error. Exit status 0 when every case passed in float32 (or float32 was not
run), 1 otherwise; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # golden_metric, golden_pipeline, ... (the CPU suite's helpers)
sys.path.insert(0, str(ROOT / "src"))  # this tree's memflow_cli, whatever else is installed

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import golden_pipeline  # noqa: E402
import golden_tae  # noqa: E402
import golden_vace  # noqa: E402
from golden_codecs import zero_after_tokens  # noqa: E402
from golden_metric import compare  # noqa: E402
from memflow_cli.weights.checkpoints import load_dit  # noqa: E402
from memflow_cli.model.dit import DiTConfig, timestep_embedding  # noqa: E402
from memflow_cli.engine.flow_matching import FlowMatchSchedule, add_noise, flow_to_x0  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Outcome:
    """What one case produced in one dtype: (name, output, expected, tolerance) per tensor, plus checks."""

    def __init__(self):
        self.tensors: list[tuple[str, torch.Tensor, torch.Tensor, dict]] = []
        self.checks: dict[str, bool] = {}  # structural checks: must hold in float32, reported in other dtypes
        self.info: dict = {}  # anything else worth keeping (compile statistics)

    def add(self, name: str, out: torch.Tensor, ref: torch.Tensor, tolerance: dict) -> None:
        self.tensors.append((name, out.detach().to("cpu"), ref, tolerance))

    def check(self, name: str, ok: bool) -> None:
        self.checks[name] = bool(ok)


# ------------------------------------------------------------------------------------------------ drivers


def _dit_files(case: dict, index: dict) -> dict:
    # as golden_pipeline.build_case_model: a case may name its own checkpoint (L1), else the index's tiny DiT
    files = dict(index["models"]["dit"]["files"])
    own = case.get("checkpoints", {})
    files.update({k: own[v] for k, v in (("checkpoint", "generator_ckpt"), ("config", "dit_config")) if v in own})
    return files


def run_pipeline(case, index, golden: Path, device, dtype, compile_fn=None) -> Outcome:
    from memflow_cli.engine.generator import StreamingGenerator, switch_chunks

    config = case["config"]
    files = _dit_files(case, index)
    lora = config.get("lora")
    model = load_dit(DiTConfig.from_file(golden / files["config"]), golden / files["checkpoint"],
                     golden / lora["file"] if lora else None, lora_alpha=lora["alpha"] if lora else None,
                     device=device, dtype=dtype)
    stats = compile_fn(model) if compile_fn is not None else None
    inputs = load_file(str(golden / case["inputs"]["file"]))
    expected = load_file(str(golden / case["expected"]["file"]))
    settings = golden_pipeline._settings(config)
    _, frames, _, height, width = config["latent_shape"]
    renoise_eps = inputs["renoise_eps"]  # [chunks, steps - 1, frames per chunk, C, h, w]

    gen = StreamingGenerator(
        model, settings, num_latent_frames=frames, latent_height=height, latent_width=width, seed=case["seed"],
        device=device, dtype=dtype, keep_records=True, noise=inputs["noise"],
        renoise=lambda chunk, step: renoise_eps[chunk, step],
    )
    tensor_for = case["inputs"]["text_tensor_for_prompt"]
    prompts = [inputs[tensor_for[p]] for p in case["prompts_in_segment_order"]]
    starts = switch_chunks(case["switch_frame_indices"], gen.num_chunks, settings.frames_per_chunk)
    segment, chunks = 0, []
    gen.set_conditioning(prompts[0])
    for chunk in range(gen.num_chunks):
        if segment < len(starts) and starts[segment] == chunk:
            segment += 1
            gen.set_conditioning(prompts[segment])
        chunks.append(gen.next_chunk())

    outcome = Outcome()
    if case.get("trace"):
        differences = golden_pipeline.trace_differences(json.loads((golden / case["trace"]).read_text()), gen.records)
        outcome.check("trace (re-caches, key frames, bank slots)", not differences)
        if differences:  # which field, which chunk and layer, and the two values
            outcome.info["trace_differences"] = differences
    if stats is not None:
        figures = stats.to_dict()
        outcome.info["compile"] = figures
        # a compiled run that fell back to eager, or never reached the compiled block, checked nothing compiled
        outcome.check("compiled block ran (no eager fallback)",
                      figures.get("fallback") is None and figures.get("compiled_calls", 1) > 0)
    outputs = {
        "latents": torch.cat(chunks, dim=1),
        "x0_steps": torch.stack([torch.cat(r.step_x0, 0) for r in gen.records]),
    }
    tol = case["tolerance"]
    for name in case["expected"]["tensors"]:
        outcome.add(f"{case['id']}.{name}", outputs[name].reshape(expected[name].shape), expected[name], tol)
    return outcome


def run_scheduler(case, index, golden: Path, device, dtype, compile_fn=None) -> Outcome:
    # The tables are host arithmetic (scheduler.py); the tensor maths runs on the device in the dtype.
    data = load_file(str(golden / case["file"]))
    tol = case["tolerance"]
    schedule = FlowMatchSchedule()
    timesteps, sigmas = schedule.table()
    on = lambda name: data[name].to(device, dtype)  # noqa: E731
    test_t = data["test_timesteps"]
    test_sigmas = [schedule.sigma(float(t)) for t in test_t]
    checks = {
        "train_timesteps": timesteps,
        "train_sigmas": sigmas,
        "denoising_timesteps": torch.tensor(schedule.warped_timesteps()),
        "test_sigmas": torch.tensor(test_sigmas),
        "add_noise_out": torch.stack([add_noise(on("x0"), on("eps"), s) for s in test_sigmas]),
        "x0_from_flow": torch.stack([flow_to_x0(on("xt"), on("flow_pred"), s) for s in test_sigmas]),
        "sinusoidal_embedding_256": timestep_embedding(test_t.to(device), data["sinusoidal_embedding_256"].shape[-1]),
    }
    outcome = Outcome()
    for name, value in checks.items():
        if name in data:
            outcome.add(f"{case['id']}.{name}", value.reshape(data[name].shape), data[name], tol)
    return outcome


def run_text_encoder(case, index, golden: Path, device, dtype, compile_fn=None) -> Outcome:
    from memflow_cli.model.t5 import load_umt5_encoder

    tensors = load_file(str(golden / case["file"]))
    encoder = load_umt5_encoder(golden / case["weights"], device=device, dtype=dtype)
    with torch.no_grad():
        out = encoder(tensors["ids"], tensors["mask"])
    embeds = zero_after_tokens(out.float().cpu(), tensors["mask"])
    outcome = Outcome()
    outcome.add(f"{case['id']}.{case['expected_tensor']}", embeds, tensors[case["expected_tensor"]], case["tolerance"])
    outcome.check("rows after the tokens are exact zeros", (embeds[tensors["mask"] == 0] == 0).all().item())
    return outcome


def run_vae(case, index, golden: Path, device, dtype, compile_fn=None) -> Outcome:
    from memflow_cli.model.vae import load_wan_vae

    tensors = load_file(str(golden / case["file"]))
    vae = load_wan_vae(golden / case["weights"], device=device, dtype=dtype)
    outcome = Outcome()
    dec, enc = case["decode"]["tolerance"], case["encode"]["tolerance"]
    outcome.add(f"{case['id']}.pixels", vae.decode(tensors["latents"]), tensors["pixels"], dec)
    outcome.add(f"{case['id']}.encode_latents", vae.encode(tensors["encode_video_in"]), tensors["encode_latents"], enc)
    stream, video = vae.stream_encoder(), tensors["encode_video_in"]
    parts = [stream.encode(video[:, :, a:b]) for a, b in ((0, 1), (1, 5), (5, 9))]
    outcome.add(f"{case['id']}.stream_encode_latents", torch.cat(parts, 1), tensors["encode_latents"], enc)
    return outcome


def run_tae(case, index, golden: Path, device, dtype, compile_fn=None) -> Outcome:
    from memflow_cli.engine.decoders import load_decoder
    from memflow_cli.model.tae import load_tae

    tensors = load_file(str(golden / case["file"]))
    tol = case["tolerance"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "taew2_1.pth"
        torch.save(golden_tae.build_case_weights(case), path)  # the recipe, checked against its checksum
        tae = load_tae(path, device=device, dtype=dtype)
        tae_decoder = load_decoder("tae", path, device=device, dtype=dtype)
        light_decoder = load_decoder("lighttae", path, device=device, dtype=dtype)
    latents = tensors["latents"]
    outcome = Outcome()
    cid = case["id"]
    outcome.add(f"{cid}.pixels_tae_unclamped", tae.decode(latents, clamp=False), tensors["pixels_tae_unclamped"], tol)
    to_unit = lambda pixels: pixels * 0.5 + 0.5  # noqa: E731  (the renderer's [-1, 1] -> the golden's [0, 1])
    stream = tae_decoder.stream_decoder()
    parts = [stream.decode(latents[:, s:e]) for s, e in ((0, 3), (3, 6), (6, 7))]
    outcome.check("streamed frame counts 9, 12, 4", [p.shape[1] for p in parts] == [9, 12, 4])
    outcome.add(f"{cid}.pixels_tae (streamed 3+3+1)", to_unit(torch.cat(parts, dim=1)), tensors["pixels_tae"], tol)
    outcome.add(f"{cid}.pixels_lighttae", to_unit(light_decoder.stream_decoder().decode(latents)),
                tensors["pixels_lighttae"], tol)
    outcome.add(f"{cid}.encode_latents", tae.encode(tensors["encode_frames_in"]), tensors["encode_latents"], tol)
    stream_enc, frames = tae.stream_encoder(), tensors["encode_frames_in"]
    streamed = torch.cat([stream_enc.encode(frames[:, s:s + 12]) for s in (0, 12)], dim=1)
    outcome.add(f"{cid}.encode_latents (streamed 12+12)", streamed, tensors["encode_latents"], tol)
    return outcome


def run_vace(case, index, golden: Path, device, dtype, compile_fn=None) -> Outcome:
    from memflow_cli.model.vace import VaceGuide, VaceTextCache, load_vace_module

    files, cfg = case["files"], case["config"]
    data = load_file(str(golden / files["golden"]))
    config = DiTConfig.from_file(golden / files["dit_config"])
    model = load_dit(config, golden / files["dit_weights"], device=device, dtype=dtype)
    vace = load_vace_module(golden / files["vace_module"], config, device=device, dtype=dtype)
    latents = data["latents_in"].to(device, dtype)
    text_emb = data["text_emb"].to(device, dtype)
    timestep = float(data["timestep"].item())
    context = data["vace_context"].permute(1, 0, 2, 3).unsqueeze(0).to(device, dtype)  # CFHW -> [B, F, C, H, W]

    def chunk0_flow(guide=None):
        return golden_vace._chunk0_flow(model, latents, timestep, text_emb, guide)

    outcome = Outcome()
    tol = case["tolerance"]
    cid = case["id"]
    with torch.no_grad():
        outcome.add(f"{cid}.vace_tokens", vace.embed_context(context), data["vace_tokens"], tol)
        text = VaceTextCache()
        no_vace = chunk0_flow()
        outcome.add(f"{cid}.flow_no_vace", no_vace, data["flow_no_vace"], tol)
        captured = golden_vace._capture_hints(model, vace, context, text, latents, timestep, text_emb)
        outcome.add(f"{cid}.hints", torch.stack(captured), data["hints"], tol)
        for scale in cfg["context_scales"]:
            flow = chunk0_flow(VaceGuide(vace, context, scale, text))
            outcome.add(f"{cid}.flow_vace_s{scale}", flow, data[f"flow_vace_s{scale}"], tol)
        flow0 = chunk0_flow(VaceGuide(vace, context, 0.0, text))
        outcome.check("scale 0 is bit-identical to no VACE", torch.equal(flow0, no_vace))
    return outcome


DRIVERS = {
    "pipeline": run_pipeline,
    "scheduler": run_scheduler,
    "text_encoder": run_text_encoder,
    "vae": run_vae,
    "tae": run_tae,
    "vace": run_vace,
}


# ------------------------------------------------------------------------------------------------ running


def _compile_helper():
    """The tree's way to compile the DiT, if it has one: (name, fn) where fn(model) prepares the model in place
    and returns its compile statistics (an object with `to_dict()`, or None). Looked up by name, so this script
    runs on trees from before and after `--compile`; (None, None) when there is none."""
    import importlib

    try:
        compile_blocks = importlib.import_module("memflow_cli.engine.compiled").compile_blocks
    except (ImportError, AttributeError):
        return None, None

    def apply(model):
        torch._dynamo.reset()  # each case compiles afresh: no recompile limit reached across cases and dtypes
        return compile_blocks(model)

    return "memflow_cli.engine.compiled.compile_blocks", apply


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case, index, golden: Path, device: torch.device, dtype_name: str, compile_fn=None) -> dict:
    driver = DRIVERS.get(case["kind"])
    result: dict = {"seconds": None, "tensors": {}, "checks": {}, "error": None}
    if driver is None:
        result["error"] = f"no driver for kind {case['kind']!r}"
        result["passed"] = False
        return result
    strict = dtype_name == "fp32"
    _sync(device)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            outcome = driver(case, index, golden, device, DTYPES[dtype_name], compile_fn)
        _sync(device)
    except Exception as exc:  # one broken case must not hide the others
        result["seconds"] = time.perf_counter() - t0
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=6)
        result["passed"] = False
        return result
    result["seconds"] = time.perf_counter() - t0
    within_all = True
    for name, out, ref, tol in outcome.tensors:
        rel, mx = compare(out, ref)
        within = rel <= tol["rel_l2"] and mx <= tol["max_abs"]
        within_all &= within
        result["tensors"][name] = {"rel_l2": rel, "max_abs": mx, "tol_rel_l2": tol["rel_l2"],
                                   "tol_max_abs": tol["max_abs"], "within_tolerance": within}
    result["checks"] = outcome.checks
    result.update(outcome.info)
    rels = [t["rel_l2"] for t in result["tensors"].values()]
    result["rel_l2"] = max(rels) if rels else None
    result["max_abs"] = max((t["max_abs"] for t in result["tensors"].values()), default=None)
    result["within_tolerance"] = within_all
    result["checks_hold"] = all(outcome.checks.values())
    # pass/fail is a float32 notion; in other dtypes it is left open (None)
    result["passed"] = (within_all and result["checks_hold"] and bool(rels)) if strict else None
    return result


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "machine": platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=list(torch.cuda.get_device_capability(device)),
                    memory_gb=props.total_memory / 2**30, cudnn=torch.backends.cudnn.version())
    else:
        info["name"] = platform.processor() or "cpu"
        info["threads"] = torch.get_num_threads()
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16, fp16 (fp32 is the one checked)")
    parser.add_argument("--cases", default="", help="comma list of case ids (default: every case in cases.json)")
    parser.add_argument("--golden", type=Path, default=ROOT / "tests" / "golden", help="golden folder (cases.json)")
    parser.add_argument("--compile", action="store_true", help="pipeline cases through the tree's DiT compile helper")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (default: stdout only)")
    args = parser.parse_args(argv)

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        parser.error(f"--dtypes: unknown {unknown}, expected some of {sorted(DTYPES)}")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda but torch.cuda.is_available() is False")
        # The goldens are float32: no TF32 in matmuls or cuDNN convolutions (cuDNN allows it by default).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    index = json.loads((args.golden / "cases.json").read_text())
    cases = index["cases"]
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        missing = set(wanted) - {c["id"] for c in cases}
        if missing:
            parser.error(f"--cases: no case {sorted(missing)} in {args.golden / 'cases.json'}")
        cases = [c for c in cases if c["id"] in wanted]

    compile_fn, compile_note = None, None
    if args.compile:
        name, compile_fn = _compile_helper()
        compile_note = f"pipeline DiT through {name}" if compile_fn else "skipped: no DiT compile helper in this tree"

    report = {"format": "memflow-golden-device/1", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              **device_info(device), "dtypes": dtypes, "compile": compile_note, "cases": []}
    t_all = time.perf_counter()
    for case in cases:
        entry = {"id": case["id"], "kind": case["kind"]}
        for dtype_name in dtypes:
            fn = compile_fn if case["kind"] == "pipeline" else None
            r = run_case(case, index, args.golden, device, dtype_name, fn)
            entry[dtype_name] = r
            entry[f"rel_l2_{dtype_name}"] = r.get("rel_l2")
            entry[f"max_abs_{dtype_name}"] = r.get("max_abs")
            entry[f"seconds_{dtype_name}"] = r["seconds"]
            status = ("PASS" if r["passed"] else "FAIL") if dtype_name == "fp32" else "measured" if not r["error"] else "ERROR"
            rel = f"{r['rel_l2']:.3e}" if r.get("rel_l2") is not None else "-"
            extra = f" ({r['error']})" if r["error"] else ""
            if r["checks"] and not r.get("checks_hold", True):
                extra += " checks failed: " + ", ".join(k for k, ok in r["checks"].items() if not ok)
            if r.get("trace_differences"):
                extra += f" ({len(r['trace_differences'])} trace difference(s), first: {r['trace_differences'][0]})"
            print(f"golden {case['id']:>3} {dtype_name}: {status} rel_l2={rel} {r['seconds']:.2f}s{extra}",
                  file=sys.stderr, flush=True)
        entry["passed"] = entry["fp32"]["passed"] if "fp32" in entry else None
        report["cases"].append(entry)
    report["seconds_total"] = time.perf_counter() - t_all
    if "fp32" in dtypes:
        report["passed"] = [c["id"] for c in report["cases"] if c["passed"]]
        report["failed"] = [c["id"] for c in report["cases"] if not c["passed"]]
        report["all_passed"] = not report["failed"]
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0 if report.get("all_passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
