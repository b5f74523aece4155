"""Batches: several timelines in one process, weights loaded once, items independent of each other."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memflow_cli.cli.app import app
from memflow_cli.render import Renderer, RenderOptions
from memflow_cli.inputs.timeline import read_timeline
from cli_run import cli
from video_frames import frames_digest

FIXTURES = Path(__file__).parent / "fixtures"


pytestmark = pytest.mark.usefixtures("isolated")


def cli_json(*args):
    result = CliRunner().invoke(app, [*(str(a) for a in args), "--json"])
    return result.exit_code, json.loads(result.stdout), result.stdout + (result.stderr or "")



def make_inputs(folder: Path) -> list[Path]:
    folder.mkdir()
    names = []
    for src in ("scope_v1.json", "scope_v21.json", "workflow.json"):
        shutil.copy(FIXTURES / src, folder / src)
        names.append(folder / src)
    return names


def test_batch_equals_single_renders_and_skips_on_rerun(tiny, tmp_path):
    inputs = make_inputs(tmp_path / "in")
    common = ["--weights-dir", tiny, "--resolution", "32x32", "--quiet"]
    code, text = cli("render", *inputs, "--output-dir", tmp_path / "batch", *common)
    assert code == 0, text
    for src in inputs:
        single = tmp_path / f"single-{src.stem}.mp4"
        code, text = cli("render", src, "-o", single, *common)
        assert code == 0, text
        batch = tmp_path / "batch" / f"{src.stem}.mp4"
        assert frames_digest(batch) == frames_digest(single)
        assert json.loads((tmp_path / "batch" / f"{src.stem}.manifest.json").read_text())["video"]["complete"]

    # the same command again does nothing: every item is already rendered
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "batch").iterdir()}
    code, data, text = cli_json("render", tmp_path / "in", "--output-dir", tmp_path / "batch", *common)
    assert code == 0, text
    assert [r["status"] for r in data] == ["skipped"] * 3 and all(r["skipped"] is True for r in data)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "batch").iterdir()} == before

    # a changed setting is a different render: the existing outputs are refused without --force
    code, data, text = cli_json("render", tmp_path / "in", "--output-dir", tmp_path / "batch", *common, "--seed", "7")
    assert code == 2, text
    assert all(r["status"] == "failed" and "--overwrite" in r["message"] for r in data)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "batch").iterdir()} == before
    code, text = cli("render", tmp_path / "in", "--output-dir", tmp_path / "batch", *common, "--seed", "7", "--force")
    assert code == 0, text
    assert json.loads((tmp_path / "batch" / "scope_v1.manifest.json").read_text())["settings"]["seed"] == 7


def test_failing_item_does_not_stop_the_batch(tiny, tmp_path):
    good = tmp_path / "good.json"
    shutil.copy(FIXTURES / "scope_v1.json", good)
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "2.1", "prompts": []}')
    code, data, text = cli_json("render", bad, good, tmp_path / "missing.json", "--output-dir", tmp_path / "out",
                                "--weights-dir", tiny, "--resolution", "32x32", "--quiet")
    assert code == 2, text
    results = {Path(r["item"]).name: r for r in data}
    assert results["good.json"]["status"] == "done"
    assert results["bad.json"]["status"] == "failed" and "bad.json" in results["bad.json"]["message"]
    assert results["missing.json"]["status"] == "failed" and "not found" in results["missing.json"]["message"]
    assert (tmp_path / "out" / "good.mp4").exists() and not (tmp_path / "out" / "bad.mp4").exists()


def test_output_with_several_items_points_to_output_dir(tiny, tmp_path):
    code, text = cli("render", FIXTURES / "prompts.jsonl", "-o", tmp_path / "x.mp4", "--weights-dir", tiny)
    assert code == 2 and "--output-dir" in text
    assert not list(tmp_path.glob("*.mp4"))


def test_renderer_loads_weights_once(tiny, tmp_path, monkeypatch):
    import memflow_cli.weights.checkpoints as checkpoints
    import memflow_cli.inputs.prompts as prompts

    loads, encoders = [], []
    real_load, real_encoder = checkpoints.load_dit, prompts.PromptEncoder
    monkeypatch.setattr(checkpoints, "load_dit", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(prompts, "PromptEncoder", lambda *a, **k: encoders.append(1) or real_encoder(*a, **k))
    renderer = Renderer(RenderOptions(weights_dir=tiny, width=32, height=32, output_dir=tmp_path / "o"))
    items = [(str(f), read_timeline(FIXTURES / f)) for f in ("scope_v1.json", "scope_v21.json")]
    results = renderer.render_batch(items)
    assert [r.status for r in results] == ["done", "done"]
    assert loads == [1] and encoders == [1]  # one DiT load, one text-encoder pass for all prompts of the batch


def test_torchrun_two_cpu_ranks_equal_single_renders(tiny, tmp_path):
    """`torchrun --standalone --nproc-per-node 2 -m memflow_cli render …`: each rank renders its share."""
    import os
    import subprocess
    import sys

    inputs = make_inputs(tmp_path / "in")
    common = ["--weights-dir", str(tiny), "--resolution", "32x32"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "memflow_cli",
         "render", str(tmp_path / "in"), "--output-dir", str(tmp_path / "dist"), *common, "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout[proc.stdout.index("["):])  # rank 0 prints the combined summary
    assert sorted(Path(r["item"]).name for r in data) == sorted(p.name for p in inputs)
    assert all(r["status"] == "done" for r in data)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's workers (OMP_NUM_THREADS=1): CPU sums depend on the thread count
    try:
        for src in inputs:
            single = tmp_path / f"single-{src.stem}.mp4"
            code, text = cli("render", src, "-o", single, *common, "--quiet")
            assert code == 0, text
            assert frames_digest(tmp_path / "dist" / f"{src.stem}.mp4") == frames_digest(single)
    finally:
        torch.set_num_threads(threads)


def test_assignment_is_balanced_and_deterministic():
    from memflow_cli.render.distributed import assign, world_from_env

    frames = [100, 10, 90, 20, 50, 50]
    owner = assign(frames, 2)
    assert owner == assign(frames, 2)
    loads = [sum(f for f, o in zip(frames, owner) if o == r) for r in range(2)]
    assert loads == [160, 160]
    assert sorted(set(assign(frames, 4))) == [0, 1, 2, 3]
    assert world_from_env({"WORLD_SIZE": "1"}) is None
    w = world_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.is_main) == (3, 4, 1, False)
