"""`memflow bench` runs end to end on CPU at a tiny size (its numbers are checked on a GPU, not here)."""

import json

import torch
from rich.console import Console

from memflow_cli.render.bench import BenchOptions, report_table, run_bench, save_report


def test_bench_reports_every_stage_for_both_runs(tmp_path):
    opts = BenchOptions(preset="tiny", width=32, height=48, chunks=4, switch_every=2, vae_dim=8,
                        device="cpu", dtype="float32")
    report = run_bench(opts)
    for run in ("with_memory", "without_memory"):
        r = report[run]
        assert r["frames"] == 9 + 12 * 3
        assert r["recaches"] == 1
        assert set(r["per_chunk_ms"]) == {"dit", "recache", "vae", "encode"}
        assert all(v > 0 for v in r["per_chunk_ms"].values())
        assert r["end_to_end_fps"] < r["generation_fps"]
        assert 0 < r["time_to_first_frame_s"] < r["seconds_total"]
    assert "memory_cost_percent" in report
    # issue 21: DiT beside the decoder and alone over the same chunks, decode ms, plan against peak, first frame
    sc = report["schedules"]
    assert report["other_schedule"]["overlap"] is False and report["with_memory"]["overlap"] is True
    assert sc["chunks_compared"] == [2, 3] and sc["chunks_serial"] == sc["chunks_overlap"] == 4
    assert sc["dit_ms_overlap"] == sum(report["with_memory"]["dit_ms_per_chunk"][2:4]) / 2
    assert sc["dit_ms_serial"] == sum(report["other_schedule"]["dit_ms_per_chunk"][2:4]) / 2
    assert sc["decode_ms_serial"] == report["other_schedule"]["per_chunk_ms"]["vae"] > 0
    from memflow_cli.weights.memory_plan import plan_memory
    from memflow_cli.model.dit import DiTConfig

    planned = plan_memory(32, 48, dtype=torch.float32, decoder="wan", dit=DiTConfig.preset("tiny"), overlap=True)
    memory = report["memory"]
    assert memory["planned_gb"] == planned.phase_bytes("generate") / 2**30 > 0
    assert "8 wide" in memory["plan_note"] and memory["measured_by"]
    assert memory["measured_gb"] is None or memory["measured_gb"] >= 0
    assert 0 < report["time_to_first_frame_after_load_s"] < sum(report["warmup_seconds"].values())
    assert not any("_first_frame_at" in report[k] for k in ("with_memory", "without_memory", "other_schedule"))
    path = save_report(report, tmp_path / "results", "memflow bench --preset tiny")
    saved = json.loads(path.read_text())
    assert saved["command"] == "memflow bench --preset tiny" and saved["options"]["preset"] == "tiny"
    console = Console(record=True, width=120)
    console.print(report_table(report))
    text = console.export_text()
    assert "generation FPS" in text and "with memory" in text and "memory bank cost" in text
    assert "alone (serial)" in text and "peak memory: planned" in text and "time to first frame after" in text


def test_bench_command_prints_json(tmp_path):
    from typer.testing import CliRunner

    from memflow_cli.cli.app import app

    result = CliRunner().invoke(app, ["bench", "--preset", "tiny", "--resolution", "32x32", "--chunks", "2",
                                      "--vae-dim", "8", "--no-video", "--no-baseline", "--device", "cpu",
                                      "--dtype", "fp32", "--json", "--save", str(tmp_path), "--vae", "lighttae",
                                      "--no-compare-schedules"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["with_memory"]["frames"] == 21 and "without_memory" not in report
    assert report["options"]["vae"] == "lighttae" and report["with_memory"]["per_chunk_ms"]["vae"] > 0
    assert list(tmp_path.glob("*.json"))
    bad = CliRunner().invoke(app, ["bench", "--resolution", "30x32"])
    assert bad.exit_code == 2 and "multiples of 16" in bad.output
    bad = CliRunner().invoke(app, ["bench", "--vae", "vqgan"])
    assert bad.exit_code == 2 and "unknown decoder" in bad.output


def test_memory_cost_with_its_noise():
    from memflow_cli.render.bench import memory_cost, memory_cost_text

    steady = [100.0, 101.0, 99.0, 100.0, 100.0, 101.0, 99.0, 100.0]
    slower = [v * 1.10 for v in steady]
    clear = memory_cost(slower, steady)
    assert abs(clear["memory_cost_percent"] - 10.0) < 1e-9 and clear["memory_cost_noise_percent"] < 1.5
    assert not clear["memory_cost_within_noise"]
    text = memory_cost_text({**clear, "options": {"sma": False}})
    assert text.startswith("memory bank costs +10.0 % ± ")
    # a "saving" is never a cost: reported as noise, not as a negative cost
    noisy = memory_cost([96.5, 80.0, 112.0, 97.5], [100.0, 85.0, 118.0, 97.0])
    assert noisy["memory_cost_percent"] < 0 and noisy["memory_cost_within_noise"]
    text = memory_cost_text({**noisy, "options": {"sma": True}})
    assert "within noise" in text and "memory bank + SMA" in text and "costs -" not in text


def test_bench_shows_progress_when_not_a_terminal(tmp_path):
    from typer.testing import CliRunner

    from memflow_cli.cli.app import app

    result = CliRunner().invoke(app, ["bench", "--preset", "tiny", "--resolution", "32x32", "--chunks", "3",
                                      "--vae-dim", "8", "--no-video", "--device", "cpu", "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    for line in ("bench warm-up: chunk 2/2", "bench with memory: chunk 1/3", "bench with memory: chunk 3/3",
                 "bench without memory: chunk 3/3", "bench serial: chunk 3/3", "bench random weights: tensor 1/"):
        assert line in result.stderr
    # what it builds, said first; no hint to use the tiny preset when it is used
    assert "bench: building the DiT 'tiny' (" in result.stderr and " M parameters, fp32)" in result.stderr
    assert "3 chunks at 32x32" in result.stderr and "--preset tiny" not in result.stderr
    assert "memory bank cost" in result.stdout and "% ± " in result.stdout


def test_bench_video_times_reading_and_encoding_the_input(tmp_path):
    from typer.testing import CliRunner

    from memflow_cli.cli.app import app

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: extra threads only spin on a loaded machine
    try:
        result = CliRunner().invoke(app, ["bench", "--preset", "tiny", "--resolution", "32x32", "--chunks", "2",
                                          "--vae-dim", "4", "--no-video", "--no-baseline", "--device", "cpu",
                                          "--dtype", "fp32", "--video", "--strength", "0.6", "--json",
                                          "--no-compare-schedules"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    run = report["with_memory"]
    assert run["frames"] == 21 and report["options"]["video"] and report["options"]["strength"] == 0.6
    assert set(run["per_chunk_ms"]) == {"read", "vae_encode", "dit", "recache", "vae", "encode"}
    assert run["per_chunk_ms"]["vae_encode"] > 0 and run["per_chunk_ms"]["read"] > 0
    console = Console(record=True, width=140)
    console.print(report_table(report))
    assert "vae_encode ms / chunk" in console.export_text()
    bad = CliRunner().invoke(app, ["bench", "--video", "--strength", "0"])
    assert bad.exit_code == 2 and "--strength" in bad.output


def test_decoder_bench_times_all_four_side_by_side():
    from memflow_cli.render.bench import run_decoder_bench

    side = run_decoder_bench(width=32, height=32, chunks=1, vae_dim=8)
    assert set(side["vae_ms_per_chunk"]) == {"tae", "lighttae", "lightvae", "wan"}
    assert all(v > 0 for v in side["vae_ms_per_chunk"].values())
    assert max(side["speedup_vs_slowest"].values()) >= 1 == min(side["speedup_vs_slowest"].values())


def test_bench_serial_and_overlapped_stream_the_same_frames():
    opts = BenchOptions(preset="tiny", width=32, height=32, chunks=3, switch_every=2, vae_dim=8, device="cpu",
                        dtype="float32", compare_without_memory=False, compare_schedules=False)
    runs = {overlap: run_bench(BenchOptions(**{**opts.__dict__, "overlap": overlap}))["with_memory"]
            for overlap in (False, True)}
    for r in runs.values():
        assert r["frames"] == 9 + 12 * 2 and r["recaches"] == 1
        assert set(r["per_chunk_ms"]) == {"dit", "recache", "vae", "encode"}
        assert all(v > 0 for v in r["per_chunk_ms"].values()) and len(r["dit_ms_per_chunk"]) == 3
    assert runs[True]["overlap"] and runs[True]["queue_wait_ms_per_chunk"] >= 0
    assert not runs[False]["overlap"] and runs[False]["queue_wait_ms_per_chunk"] == 0


def test_bench_says_what_it_builds_and_points_a_cpu_to_the_tiny_preset():
    from memflow_cli.render.bench import describe_build, dit_parameter_count
    from memflow_cli.model.dit import DiTConfig

    full = dit_parameter_count(DiTConfig.preset("wan2.1-t2v-1.3b"))
    assert 1.2e9 < full < 1.5e9  # Wan2.1-T2V-1.3B
    lines = describe_build(BenchOptions(device="cpu", dtype="fp32"))
    assert lines[0].startswith(f"bench: building the DiT 'wan2.1-t2v-1.3b' ({full / 1e9:.2f} B parameters, fp32)")
    assert "20 chunks at 832x480" in lines[0] and "'wan' decoder (width 96)" in lines[0]
    assert "--preset tiny --resolution 64x64 --vae-dim 8" in lines[1]
    assert len(describe_build(BenchOptions(device="cuda", dtype="bf16"))) == 1
