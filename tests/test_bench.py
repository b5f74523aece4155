"""`memflow bench` runs end to end on CPU at a tiny size (its numbers are checked on a GPU, not here)."""

import json

from rich.console import Console

from memflow_cli.bench import BenchOptions, report_table, run_bench, save_report


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
    path = save_report(report, tmp_path / "results", "memflow bench --preset tiny")
    saved = json.loads(path.read_text())
    assert saved["command"] == "memflow bench --preset tiny" and saved["options"]["preset"] == "tiny"
    console = Console(record=True, width=120)
    console.print(report_table(report))
    text = console.export_text()
    assert "generation FPS" in text and "with memory" in text and "memory bank costs" in text


def test_bench_command_prints_json(tmp_path):
    from typer.testing import CliRunner

    from memflow_cli.cli import app

    result = CliRunner().invoke(app, ["bench", "--preset", "tiny", "--resolution", "32x32", "--chunks", "2",
                                      "--vae-dim", "8", "--no-video", "--no-baseline", "--device", "cpu",
                                      "--dtype", "float32", "--json", "--save", str(tmp_path), "--vae", "lighttae"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["with_memory"]["frames"] == 21 and "without_memory" not in report
    assert report["options"]["vae"] == "lighttae" and report["with_memory"]["per_chunk_ms"]["vae"] > 0
    assert list(tmp_path.glob("*.json"))
    bad = CliRunner().invoke(app, ["bench", "--resolution", "30x32"])
    assert bad.exit_code == 2 and "multiples of 16" in bad.output
    bad = CliRunner().invoke(app, ["bench", "--vae", "vqgan"])
    assert bad.exit_code == 2 and "unknown decoder" in bad.output


def test_decoder_bench_times_all_four_side_by_side():
    from memflow_cli.bench import run_decoder_bench

    side = run_decoder_bench(width=32, height=32, chunks=1, vae_dim=8)
    assert set(side["vae_ms_per_chunk"]) == {"tae", "lighttae", "lightvae", "wan"}
    assert all(v > 0 for v in side["vae_ms_per_chunk"].values())
    assert max(side["speedup_vs_slowest"].values()) >= 1 == min(side["speedup_vs_slowest"].values())
