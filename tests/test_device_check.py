"""benchmarks/device-check.sh: the one-shot GPU check, run here in its dry-run mode (CPU, tiny sizes).

The dry run is the same sequence as the GPU run: the golden cases on the device (float32 must pass, bf16
measured), the bench matrix (eager / --compile x wan / lighttae, SMA, fp8, a longer stream), one JSON per
run, summary.md. What it checks is that the script, its bookkeeping and every flag it passes work, so that a
session that is lent a GPU for a few minutes gets numbers, not a traceback.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device-check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

import summarize  # noqa: E402

# name -> (bench flags it needs, what the run is)
BENCH_RUNS = {  # in the script's order (most important first)
    "eager-wan": ((), {"vae": "wan", "sma": False, "baseline": True, "chunks": 4, "schedules": True}),
    "compile-lighttae": (("--compile",), {"vae": "lighttae", "sma": False, "baseline": False, "chunks": 4}),
    "flat-lighttae": ((), {"vae": "lighttae", "sma": False, "baseline": False, "chunks": 6}),
    "compile-wan": (("--compile",), {"vae": "wan", "sma": False, "baseline": False, "chunks": 4, "schedules": True}),
    "sma-lighttae": ((), {"vae": "lighttae", "sma": True, "baseline": True, "chunks": 4}),
    "fp8-lighttae": (("--quantization",), {"vae": "lighttae", "sma": False, "baseline": False, "chunks": 4}),
}
GOLDEN_RUNS = ("golden", "golden-compile")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _bench_flags() -> set[str]:
    """The options `memflow bench` has, read from the CLI itself (not from its help text, as the script does)."""
    import typer.main

    from memflow_cli.cli.app import app

    command = typer.main.get_command(app).commands["bench"]
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def _run(*args, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("device-check")
    proc = _run("--dry-run", "--results", results)
    return proc, results


def _finite_positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_dry_run_succeeds_without_a_wheels_folder(dry_run):
    proc, results = dry_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "no wheels folder given: nothing installed" in proc.stderr
    env = json.loads((results / "environment.json").read_text())
    assert env["dry_run"] is True and env["device"] == "cpu" and env["torch"]
    assert env["fp8_path"] == "dequantize"
    if (ROOT / ".git").exists() and shutil.which("git"):  # the project's own repository: its HEAD
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        assert env["commit"] == head
    assert env["source_sha256"] == summarize.source_hash(ROOT / "src")


def test_every_bench_run_writes_its_json(dry_run):
    proc, results = dry_run
    flags = _bench_flags()
    for name, (needs, want) in BENCH_RUNS.items():
        path = results / f"{name}.json"
        assert path.is_file(), f"{name}: no JSON ({sorted(p.name for p in results.iterdir())})"
        report = json.loads(path.read_text())
        check = report["device_check"]
        assert check["name"] == name
        missing = [f for f in needs if f not in flags]
        if missing:  # only while the flag has not landed: recorded, not silently dropped
            assert check["status"] == "skipped" and "flag not available" in check["reason"], check
            continue
        assert check["status"] == "ok", check
        assert check["rc"] == 0 and check["seconds"] >= 0
        for flag in needs:
            assert flag in check["command"]
        options = report["options"]
        assert options["preset"] == "tiny" and options["device"] == "cpu"
        assert (options["width"], options["height"]) == (64, 64)
        assert options["vae"] == want["vae"] and options["sma"] == want["sma"]
        assert options["chunks"] == want["chunks"]
        run = report["with_memory"]
        assert run["chunks"] == want["chunks"] and len(run["dit_ms_per_chunk"]) == want["chunks"]
        assert run["frames"] == 9 + 12 * (want["chunks"] - 1)
        for key in ("generation_fps", "end_to_end_fps", "dit_ms_early", "dit_ms_late", "peak_memory_gb"):
            assert _finite_positive(run[key]), (name, key, run[key])
        assert _finite_positive(run["per_chunk_ms"]["dit"]) and _finite_positive(run["per_chunk_ms"]["vae"])
        assert run["recaches"] >= 1  # --switch-every 2: the re-cache is exercised too
        assert run["generation_fps"] > run["end_to_end_fps"]
        if "--compile" in needs:  # compiled for real: no silent fall-back to eager
            assert options["compile"] is True
            assert report["compile"]["fallback"] is None and report["compile"]["compilations"] >= 1, report["compile"]
        if "--quantization" in needs:
            assert options["quantization"] == "fp8" and report["fp8"]
        if want["baseline"]:
            assert "without_memory" in report and math.isfinite(report["memory_cost_percent"])
        else:
            assert "without_memory" not in report and "memory_cost_percent" not in report
        if want.get("schedules"):  # the Wan runs: DiT beside the decoder and alone
            sc = report["schedules"]
            assert _finite_positive(sc["dit_ms_overlap"]) and _finite_positive(sc["dit_ms_serial"])
            assert _finite_positive(sc["decode_ms_serial"])
        else:
            assert "schedules" not in report
        assert _finite_positive(report["memory"]["planned_gb"])
        assert _finite_positive(report["time_to_first_frame_after_load_s"])


def test_golden_runs_every_case_and_float32_passes(dry_run):
    proc, results = dry_run
    index = json.loads((ROOT / "tests" / "golden" / "cases.json").read_text())
    ids = [c["id"] for c in index["cases"]]
    golden = json.loads((results / "golden.json").read_text())
    assert golden["device_check"]["status"] == "ok"
    assert golden["device"] == "cpu" and golden["dtypes"] == ["fp32", "bf16"]
    assert [c["id"] for c in golden["cases"]] == ids
    assert golden["all_passed"] and golden["passed"] == ids and golden["failed"] == []
    for case in golden["cases"]:
        assert case["passed"] is True, case
        assert case["fp32"]["error"] is None and case["bf16"]["error"] is None
        assert case["rel_l2_fp32"] <= 1e-5
        # bf16 is measured, not judged; rounding to bf16 costs ~1e-3..1e-2 on these cases
        assert 1e-4 < case["rel_l2_bf16"] < 0.1, case["id"]
        assert case["seconds_fp32"] >= 0 and case["seconds_bf16"] >= 0
        assert all(t["within_tolerance"] for t in case["fp32"]["tensors"].values())
    compiled = json.loads((results / "golden-compile.json").read_text())
    check = compiled["device_check"]
    assert check["status"] == "ok", check
    assert [c["id"] for c in compiled["cases"]] == ["B1"] and compiled["all_passed"]  # dry run: one case, fp32
    b1 = compiled["cases"][0]["fp32"]
    assert b1["checks"]["compiled block ran (no eager fallback)"] is True
    assert b1["compile"]["compiled_calls"] > 0 and b1["compile"]["fallback"] is None


def test_summary_has_a_row_per_run_and_the_targets(dry_run):
    proc, results = dry_run
    text = (results / "summary.md").read_text()
    assert "dry run" in text
    for name in BENCH_RUNS:
        assert f"| {name} |" in text, name
    for case in ("B1", "E", "F", "V1", "L1"):
        assert f"| {case} |" in text
    data = json.loads((results / "summary.json").read_text())
    assert [r["name"] for r in data["runs"]] == list(BENCH_RUNS)  # the script's order
    assert len(data["targets"]) == len(summarize.TARGETS)
    assert data["skipped_for_time"] == [] and "Skipped for time: none." in text
    for step in (*BENCH_RUNS, "golden", "profile", "attention", "golden-compile"):
        assert f"| {step} | ok |" in text, step
    assert {t["status"] for t in data["targets"]} <= {"met", "missed", "not measured"}
    assert proc.stdout.startswith("# device check")


def test_wheels_folder_must_exist(tmp_path):
    proc = _run("--dry-run", "--wheels", tmp_path / "nothing-here", "--results", tmp_path / "r", timeout=60)
    assert proc.returncode != 0 and "no such folder" in proc.stderr


def test_real_mode_without_cuda_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = _run("--results", tmp_path / "r", "--budget", "60", timeout=120)
    assert proc.returncode != 0
    assert "no CUDA device" in proc.stderr and "--dry-run" in proc.stderr


def test_unknown_arguments_are_refused(tmp_path):
    proc = _run("--dry-run", "--frobnicate", timeout=30)
    assert proc.returncode != 0 and "unknown argument: --frobnicate" in proc.stderr


# ------------------------------------------------------------------------------------------- bookkeeping


def _row(name, **kw):
    row = {"name": name, "status": "ok", "variant": {"vae": "wan"}, "gen_fps": None, "e2e_fps": None,
           "memory_cost": None, "memory_cost_within_noise": False, "peak_gb": None, "dit_ms_early": None,
           "dit_ms_late": None, "chunks": 40, "vae_ms": None, "decode_ms_serial": None, "over_plan_percent": None}
    row.update(kw)
    return row


def test_targets_met_and_missed():
    rows = [
        _row("eager-wan", gen_fps=35.0, e2e_fps=31.0, memory_cost=12.0, peak_gb=14.0, dit_ms_early=300.0,
             dit_ms_late=310.0, vae_ms=120.0, decode_ms_serial=88.0, over_plan_percent=-4.0),
        _row("compile-lighttae", variant={"vae": "lighttae", "compile": True}, gen_fps=44.0, e2e_fps=38.0,
             peak_gb=13.0, dit_ms_early=250.0, dit_ms_late=300.0, over_plan_percent=12.5),
        _row("flat-lighttae", variant={"vae": "lighttae"}, gen_fps=30.0, dit_ms_early=500.0, dit_ms_late=560.0,
             chunks=200),
        _row("sma-lighttae", variant={"vae": "lighttae", "sma": True}, memory_cost=7.0, peak_gb=13.0),
        _row("fp8-lighttae", variant={"vae": "lighttae", "quantization": "fp8"}, gen_fps=90.0, e2e_fps=80.0,
             dit_ms_late=450.0),
        _row("broken", status="failed", variant={"vae": "wan"}, gen_fps=1000.0),
    ]
    by = {c["target"]: c for c in summarize.target_checks(rows)}
    assert len(by) == len(summarize.TARGETS)
    gen = by["generation ≥ 40 FPS"]
    assert gen["status"] == "met" and gen["run"] == "compile-lighttae"  # not fp8's, not the failed run's
    assert by["end to end with the Wan VAE ≥ 30 FPS"]["status"] == "met"
    lt = by["end to end with lighttae ≥ 40 FPS"]
    assert lt["status"] == "missed" and lt["value"] == 38.0
    default = by["default path (no flags) generation ≥ 36 FPS"]
    assert default["status"] == "missed" and default["run"] == "eager-wan"  # not compile-lighttae's 44
    decode = by["Wan VAE decode ≤ 90 ms per chunk"]
    assert decode["status"] == "met" and decode["value"] == 88.0  # the decoder alone, not beside the DiT (120)
    fp8 = by["fp8 DiT ≥ 1.3× faster than bf16"]
    assert fp8["status"] == "missed" and fp8["value"] == 560.0 / 450.0 and fp8["run"] == "fp8-lighttae"
    plan = by["peak within 10 % of the plan"]
    assert plan["status"] == "missed" and plan["run"] == "compile-lighttae" and plan["value"] == 12.5
    assert by["memory bank cost ≤ 15 %"]["status"] == "met"
    sma = by["memory bank + SMA cost ≤ 5 %"]
    assert sma["status"] == "missed" and sma["run"] == "sma-lighttae"
    assert by["peak memory ≤ 16 GB"]["status"] == "met"
    flat = [c for c in by.values() if c["target"].startswith("flat")][0]
    assert flat["status"] == "missed" and flat["run"] == "flat-lighttae"  # the longest run: 560 / 500 = 1.12


def test_nothing_measured_is_not_met():
    checks = summarize.target_checks([_row("eager-wan", status="timeout")])
    assert {c["status"] for c in checks} == {"not measured"}


def test_record_keeps_a_failed_run(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("loading\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    out = tmp_path / "eager-wan.json"
    summarize.main(["record", "--name", "eager-wan", "--rc", "1", "--seconds", "3", "--report",
                    str(tmp_path / "missing.out"), "--log", str(log), "--out", str(out), "--variant", '{"vae": "wan"}'])
    check = json.loads(out.read_text())["device_check"]
    assert check["status"] == "failed" and "no JSON report" in check["reason"]
    assert "CUDA out of memory" in check["log_tail"]
    summarize.main(["record", "--name", "eager-wan", "--rc", "124", "--seconds", "90", "--out", str(out),
                    "--timeout", "90"])
    check = json.loads(out.read_text())["device_check"]
    assert check["status"] == "timeout" and "90 s" in check["reason"]


def test_requirements_are_the_project_dependencies_but_torch(capsys):
    summarize.main(["requirements", str(ROOT / "pyproject.toml")])
    reqs = capsys.readouterr().out.split()
    assert "typer>=0.12" in reqs and "imageio-ffmpeg>=0.5" in reqs
    assert not any(r.lower().startswith("torch") for r in reqs)


def test_a_failed_or_fallen_back_compile_run_asks_for_the_run_without_cuda_graphs(tmp_path):
    def report(name, **data):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        return path

    ok = report("ok", device_check={"status": "ok"}, compile={"fallback": None})
    fell = report("fell", device_check={"status": "ok"}, compile={"fallback": "InductorError: boom"})
    failed = report("failed", device_check={"status": "failed"})
    skipped = report("skipped", device_check={"status": "skipped"})
    assert [summarize.compiled_run_failed(p) for p in (ok, fell, failed, skipped, tmp_path / "absent.json")] == [
        False, True, True, False, False]
    assert summarize.main(["fell-back", str(fell)]) == 0 and summarize.main(["fell-back", str(ok)]) == 1


# ------------------------------------------------------------------------------------- golden traces on a device


class _IndicesOnDevice(torch.Tensor):
    """The bank's `keep` indices as the bookkeeping sees them on a GPU: the device says not-CPU; .cpu() copies back."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @property
    def device(self):
        return torch.device("meta")

    def cpu(self):
        return self.as_subclass(torch.Tensor)


@pytest.fixture
def bank_indices_on_a_device(monkeypatch):
    from memflow_cli.engine.memory import MemoryBank

    keep_order = MemoryBank.keep_order
    monkeypatch.setattr(MemoryBank, "keep_order", lambda self, text: keep_order(self, text).as_subclass(_IndicesOnDevice))


def _golden_case(case_id):
    index = json.loads((ROOT / "tests" / "golden" / "cases.json").read_text())
    return next(c for c in index["cases"] if c["id"] == case_id), index


def test_trace_differences_name_the_field_and_both_values(bank_indices_on_a_device):
    # The cause of B1-B5's trace failure on the H200: with the bank's indices on a device, a render's
    # bookkeeping records -1 ("unknown") for the slots after a compression (it never reads indices back), and
    # the trace compares frame numbers. A generator keeping records now reads them back on every device.
    import golden_pipeline
    from memflow_cli.engine.generator import StreamingGenerator

    case, index = _golden_case("B1")
    trace = json.loads((ROOT / "tests" / "golden" / case["trace"]).read_text())
    gen, _ = golden_pipeline.generate_case(case, index, ROOT / "tests" / "golden")
    assert golden_pipeline.trace_differences(trace, gen.records) == []  # the fix: the same frames as on the CPU
    golden_pipeline.check_trace(trace, gen.records)

    render_like = StreamingGenerator(gen.model, gen.settings, num_latent_frames=gen.num_chunks * 3,
                                     latent_height=case["config"]["latent_shape"][3],
                                     latent_width=case["config"]["latent_shape"][4], seed=0)
    assert render_like.memory.bank.track_frames is False  # a render never waits to learn the bank's frames
    for record in gen.records:
        record.bank_frames = [[-1] * len(ids) if ids else ids for ids in record.bank_frames]
    found = golden_pipeline.trace_differences(trace, gen.records)
    assert found and all("bank frames: golden [" in line for line in found), found
    assert "run [-1" in found[0] and found[0].startswith("chunk ")
    with pytest.raises(AssertionError, match="trace difference"):
        golden_pipeline.check_trace(trace, gen.records)


def test_golden_device_keeps_the_bank_bookkeeping_of_a_device_run(bank_indices_on_a_device):
    import golden_device

    case, index = _golden_case("B1")
    outcome = golden_device.run_pipeline(case, index, ROOT / "tests" / "golden", torch.device("cpu"), torch.float32)
    assert outcome.checks == {"trace (re-caches, key frames, bank slots)": True}
    assert "trace_differences" not in outcome.info


def test_summary_says_why_a_golden_case_failed(tmp_path):
    result = {"passed": False, "error": None, "rel_l2": 4.2e-7, "seconds": 1.0,
              "checks": {"trace (re-caches, key frames, bank slots)": False},
              "trace_differences": ["chunk 4, layer 0: bank frames: golden [0, 3, 9], run [-1, -1, -1]"],
              "tensors": {"B1.latents": {"within_tolerance": True}}}
    (tmp_path / "golden.json").write_text(json.dumps({"device": "cuda", "dtypes": ["fp32"], "cases": [
        {"id": "B1", "kind": "pipeline", "fp32": result}], "failed": ["B1"], "passed": []}))
    text = "\n".join(summarize.golden_lines(tmp_path))
    assert "**FAIL** (check failed: trace (re-caches, key frames, bank slots); 1 trace difference(s), first: chunk 4," \
           " layer 0: bank frames: golden [0, 3, 9], run [-1, -1, -1])" in text


def test_commit_is_the_projects_own_even_inside_another_repository(tmp_path):
    # A checkout copied into another git repository (as on a device machine): not the outer HEAD, but
    # "unknown" (or $MEMFLOW_COMMIT) and the content hash of src/.
    git = shutil.which("git")
    if git is None:
        pytest.skip("needs git")
    outer = tmp_path / "outer"
    project = outer / "copy-of-memflow"
    (project / "benchmarks").mkdir(parents=True)
    (project / "tests" / "golden").mkdir(parents=True)
    for name in ("device-check.sh", "summarize.py"):
        shutil.copy(ROOT / "benchmarks" / name, project / "benchmarks" / name)
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    shutil.copy(ROOT / "tests" / "golden" / "cases.json", project / "tests" / "golden" / "cases.json")
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("MEMFLOW_COMMIT", None)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "outer"]):
        subprocess.run([git, *args], cwd=outer, env=env, check=True, capture_output=True)
    outer_head = subprocess.run([git, "rev-parse", "HEAD"], cwd=outer, capture_output=True, text=True).stdout.strip()

    def environment(**extra):
        results = tmp_path / f"r{len(extra)}"
        proc = subprocess.run(["bash", str(project / "benchmarks" / "device-check.sh"), "--dry-run", "--only", "none",
                               "--results", str(results)], cwd=tmp_path, env={**env, "PYTHON": sys.executable, **extra},
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((results / "environment.json").read_text())

    recorded = environment()
    assert recorded["commit"] == "unknown" != outer_head
    assert recorded["source_sha256"] == summarize.source_hash(ROOT / "src")
    assert environment(MEMFLOW_COMMIT="abc123")["commit"] == "abc123"


# ------------------------------------------------------------------------------------------- kernel profile


@pytest.mark.parametrize("name, kind", [
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>>",
     "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_kernel0_0", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas",
     "gemm"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", "gemm"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>", "gemm"),
    ("aten::addmm", "gemm"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_ndhwckrsc_ndhwc_tilesize128x128x64", "conv"),
    ("aten::slow_conv3d_forward", "conv"),
    ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true>", "elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::BinaryFunctor<c10::BFloat16, MulFunctor>>",
     "elementwise"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::OpaqueType<2u>, unsigned int, 4, 64>",
     "elementwise"),
    ("Memcpy DtoD (Device -> Device)", "elementwise"),
    ("triton_poi_fused_add_mul_0", "elementwise"),
    ("aten::copy_", "elementwise"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>", "other"),
    ("triton_per_fused_native_layer_norm_1", "other"),
    ("aten::linalg_vector_norm", "other"),
    ("aten::expand", "other"),
])
def test_kernels_are_classified_by_kind(name, kind):
    import kernel_profile

    assert kernel_profile.classify_kernel(name) == kind


def test_profile_figures_per_chunk_from_device_events():
    import kernel_profile
    from types import SimpleNamespace

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def event(key, us, count, device_type=cuda):
        return SimpleNamespace(key=key, count=count, device_type=device_type, self_device_time_total=us,
                               self_cpu_time_total=us)

    events = [event("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 6000.0, 60),
              event("nvjet_tst_128x256", 3000.0, 300), event("void at::native::elementwise_kernel<copy>", 900.0, 600),
              event("Memcpy DtoD (Device -> Device)", 100.0, 40), event("aten::mm", 99999.0, 300, cpu),
              SimpleNamespace(key="Torch-Compiled Region: 0/0", count=2, device_type=cuda, self_device_time_total=9e9,
                              is_user_annotation=True)]
    figures = kernel_profile.summarize_events(events, chunks=2, device=True)
    assert figures["ms_per_chunk"] == {"attention": 3.0, "gemm": 1.5, "elementwise": 0.5, "conv": 0.0, "other": 0.0}
    assert figures["launches_per_chunk"] == 500 and figures["total_ms_per_chunk"] == 5.0
    assert figures["percent"]["attention"] == 60.0
    assert [t["kind"] for t in figures["top"]] == ["attention", "gemm", "elementwise", "elementwise"]


def test_ffmpeg_carried_compressed_is_unpacked_and_runs(tmp_path, capsys):
    import lzma

    wheels = tmp_path / "whl"
    wheels.mkdir()
    script = b"#!/bin/sh\necho 'ffmpeg version 7.0.2-static'\n"
    with lzma.open(wheels / "ffmpeg-linux-x86_64-v7.0.2.xz", "wb") as f:
        f.write(script)
    assert summarize.main(["unpack-ffmpeg", str(wheels), str(tmp_path / "bin")]) == 0
    exe = Path(capsys.readouterr().out.strip())
    assert exe == tmp_path / "bin" / "ffmpeg-linux-x86_64-v7.0.2" and exe.read_bytes() == script
    assert subprocess.run([str(exe)], capture_output=True, text=True).stdout.startswith("ffmpeg version 7.0.2")
    (wheels / "ffmpeg-other.xz").write_bytes(b"")
    with pytest.raises(SystemExit, match="expected one ffmpeg"):
        summarize.unpack_ffmpeg(wheels, tmp_path / "bin2")


def test_profile_step_reports_time_by_kind(dry_run):
    proc, results = dry_run
    data = json.loads((results / "profile.json").read_text())
    assert data["device_check"]["status"] == "ok" and data["device_check"]["kind"] == "profile"
    figures = data["profile"]
    assert set(figures["ms_per_chunk"]) == {"attention", "gemm", "elementwise", "conv", "other"}
    for kind in ("attention", "gemm", "elementwise", "conv"):  # a DiT pass and a Wan VAE decode have all four
        assert figures["ms_per_chunk"][kind] > 0, kind
    assert abs(sum(figures["percent"].values()) - 100) < 1e-6 and figures["launches_per_chunk"] > 100
    text = (results / "summary.md").read_text()
    assert "## Where a steady chunk's time goes (profile)" in text and "| attention |" in text
    assert "aten ops (CPU; not kernels) per chunk:" in text


def test_attention_step_times_the_kernels_that_run_here(dry_run):
    proc, results = dry_run
    data = json.loads((results / "attention.json").read_text())
    assert data["device_check"]["status"] == "ok" and data["device_check"]["kind"] == "attention"
    sdpa = data["kernels"]["sdpa"]
    assert sdpa["ran"] and sdpa["ms"] > 0 and sdpa["tflops"] > 0 and sdpa["rel_l2_vs_fp32"] < 1e-5
    assert data["fastest"] == "sdpa"  # the only kernel a CPU has
    assert all(not k["ran"] and k["reason"] for n, k in data["kernels"].items() if n != "sdpa")
    text = (results / "summary.md").read_text()
    assert "## Attention kernels at the steady shape" in text and "| sdpa |" in text
    assert "| flash-attn-3 | – | – | – | not run:" in text


def test_attention_error_is_measured_against_float32(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import attention

    shape = dict(attention.TINY, queries=40, keys=64)
    report = attention.run(shape, torch.device("cpu"), torch.bfloat16, repeats=1)
    err = report["kernels"]["sdpa"]["rel_l2_vs_fp32"]
    assert 1e-4 < err < 3e-2  # bf16 SDPA against the float32 reference: a real, small error
    assert report["per_steady_chunk_ms"]["sdpa"] == round(report["kernels"]["sdpa"]["ms"] * 150, 1)
