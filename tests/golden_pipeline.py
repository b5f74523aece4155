"""Golden runners for the core: `pipeline` cases (the streaming generator end to end) and `scheduler`.

Everything comes from the case's settings and the index's `models` entry: nothing here knows case ids.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from golden_metric import assert_close
from memflow_cli.weights.checkpoints import load_dit
from memflow_cli.engine.generator import StreamingGenerator, StreamSettings, switch_chunks
from memflow_cli.model.dit import DiTConfig, timestep_embedding
from memflow_cli.engine.flow_matching import FlowMatchSchedule, add_noise, flow_to_x0


def _settings(config: dict) -> StreamSettings:
    entry = config.get("entry_point", "interactive")
    return StreamSettings(
        frames_per_chunk=config["num_frame_per_block"],
        local_attn_size=config["local_attn_size"],
        sink_size=config["sink_size"],
        bank_size=config["bank_size"],
        record_interval=config["record_interval"],
        sma=bool(config["SMA"]),
        sma_top_k=config.get("sma_top_k", 3),
        bank_staging="interactive" if "interactive" in entry.lower() else "every_chunk",
        context_noise=config.get("context_noise", 0),
        denoising_steps=tuple(config["denoising_step_list"]),
        warp=config["warp_denoising_step"],
        shift=config["timestep_shift"],
    )


def build_case_model(case: dict, index: dict, golden: Path):
    # A case may name its own checkpoint (L1: LongLive's layout); else the index's tiny DiT.
    files = dict(index["models"]["dit"]["files"])
    own = case.get("checkpoints", {})
    files.update({k: own[v] for k, v in (("checkpoint", "generator_ckpt"), ("config", "dit_config")) if v in own})
    config = DiTConfig.from_file(golden / files["config"])
    lora = case["config"].get("lora")
    return load_dit(
        config,
        golden / files["checkpoint"],
        golden / lora["file"] if lora else None,
        lora_alpha=lora["alpha"] if lora else None,
        dtype=torch.float32,
    )


def generate_case(case: dict, index: dict, golden: Path, model=None, dtype=torch.float32):
    """Run a pipeline case's stream (its noise, prompts and switches) through `model` (default: the
    case's float32 model). Returns (generator, chunks of latents)."""
    config = case["config"]
    model = model if model is not None else build_case_model(case, index, golden)
    inputs = load_file(str(golden / case["inputs"]["file"]))
    settings = _settings(config)
    _, frames, _, height, width = config["latent_shape"]

    gen = StreamingGenerator(
        model, settings, num_latent_frames=frames, latent_height=height, latent_width=width,
        seed=case["seed"], dtype=dtype, keep_records=True,
    )
    tensor_for = case["inputs"]["text_tensor_for_prompt"]
    prompts = [inputs[tensor_for[p]] for p in case["prompts_in_segment_order"]]
    starts = switch_chunks(case["switch_frame_indices"], gen.num_chunks, settings.frames_per_chunk)
    segment = 0
    gen.set_conditioning(prompts[0])
    chunks = []
    for chunk in range(gen.num_chunks):
        if segment < len(starts) and starts[segment] == chunk:
            segment += 1
            gen.set_conditioning(prompts[segment])
        chunks.append(gen.next_chunk())
    return gen, chunks


def run_pipeline_case(case: dict, index: dict, golden: Path, model=None) -> dict:
    """Check a pipeline case; `model` (default: the case's float32 model) lets a caller pass a prepared one
    (e.g. compiled, tests/test_compile.py)."""
    inputs = load_file(str(golden / case["inputs"]["file"]))
    expected = load_file(str(golden / case["expected"]["file"]))
    gen, chunks = generate_case(case, index, golden, model=model)

    # The generator draws its own noise, chunk by chunk; together it must be the noise the reference drew whole.
    torch.testing.assert_close(torch.cat([r.noise for r in gen.records], 1), inputs["noise"], rtol=0, atol=0)
    renoise = torch.stack([torch.cat(r.renoise, 0) for r in gen.records])
    torch.testing.assert_close(renoise.reshape(inputs["renoise_eps"].shape), inputs["renoise_eps"], rtol=0, atol=0)

    if case.get("trace"):
        check_trace(json.loads((golden / case["trace"]).read_text()), gen.records)

    report = {}
    tol = case["tolerance"]
    outputs = {
        "latents": torch.cat(chunks, dim=1),
        "x0_steps": torch.stack([torch.cat(r.step_x0, 0) for r in gen.records]),
    }
    for name in case["expected"]["tensors"]:
        assert_close(f"{case['id']}.{name}", outputs[name].reshape(expected[name].shape), expected[name], tol, report)
    return report


def trace_differences(trace: dict, records) -> list[str]:
    """Where a run's records differ from the reference's trace, one line per difference with both values:
    re-caches, key frames per pass, bank contents per chunk and layer. Empty when they agree."""
    if len(records) != len(trace["chunks"]):
        return [f"chunks: golden {len(trace['chunks'])}, run {len(records)}"]
    found = []
    for chunk, record in zip(trace["chunks"], records):
        calls = chunk["calls"]
        where = f"chunk {chunk['chunk']}"
        recached = any(c["kind"] == "recache" for c in calls)
        if record.recached != recached:
            found.append(f"{where}: re-cached: golden {recached}, run {record.recached}")
        key_frames = [sorted({int(v) for v in c["attn_key_frames"].values()}) for c in calls]
        if [[k] for k in record.key_frames] != key_frames:
            found.append(f"{where}: key frames per pass: golden {key_frames}, run {[[k] for k in record.key_frames]}")
        final = calls[-1]["bank_slot_frames_after"]
        for layer, slots in enumerate(final):
            expected = sorted(f for f in slots if f != "empty")
            got = sorted(record.bank_frames[layer]) if layer < len(record.bank_frames) else None
            if got != expected:
                found.append(f"{where}, layer {layer}: bank frames: golden {expected}, run {got}")
    return found


def check_trace(trace: dict, records) -> None:
    """The structure the reference recorded: re-caches, key frames per pass, bank contents per chunk."""
    found = trace_differences(trace, records)
    assert not found, f"{len(found)} trace difference(s): " + "; ".join(found[:5])


def run_scheduler_case(case: dict, index: dict, golden: Path) -> dict:
    data = load_file(str(golden / case["file"]))
    tol = case["tolerance"]
    schedule = FlowMatchSchedule()
    timesteps, sigmas = schedule.table()
    report = {}
    checks = {
        "train_timesteps": timesteps,
        "train_sigmas": sigmas,
        "denoising_timesteps": torch.tensor(schedule.warped_timesteps()),
    }
    test_t = data["test_timesteps"]
    test_sigmas = [schedule.sigma(float(t)) for t in test_t]
    checks["test_sigmas"] = torch.tensor(test_sigmas)
    checks["add_noise_out"] = torch.stack([add_noise(data["x0"], data["eps"], s) for s in test_sigmas])
    checks["x0_from_flow"] = torch.stack([flow_to_x0(data["xt"], data["flow_pred"], s) for s in test_sigmas])
    checks["sinusoidal_embedding_256"] = timestep_embedding(test_t, data["sinusoidal_embedding_256"].shape[-1])
    for name, value in checks.items():
        if name in data:
            assert_close(f"{case['id']}.{name}", value.reshape(data[name].shape), data[name], tol, report)
    assert set(case["tensors"]) - set(checks) <= {"x0", "eps", "xt", "flow_pred", "test_timesteps"}, "unchecked tensors"
    return report


RUNNERS = {"pipeline": run_pipeline_case, "scheduler": run_scheduler_case}
