"""Issue 22, third hostile pass: inputs a batch would overwrite, checkpoints that lie, renders that collide,
non-finite weights, inputs that hang, plans that do not fit, revisions that are paths, quiet failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from cli_run import cli
from lora_files import layouts, low_rank_delta, write
from memflow_cli.model.dit import DiTConfig

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.usefixtures("isolated")


def flat(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def deadline(seconds: int):
    """A hang fails the test instead of blocking the suite."""
    def fire(*_):
        raise TimeoutError(f"still running after {seconds} s: the input was opened and blocked")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def timeline(tmp_path: Path, name: str = "t.json", seconds: float = 0.75) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({
        "version": "2.1", "settings": {"resolution": {"width": 32, "height": 32}},
        "prompts": [{"startTime": 0, "endTime": seconds, "prompts": [{"text": "a red kite over a beach", "weight": 1}]}]}))
    return path


# ------------------------------------------------------------------------------------------------
# --revision is a commit or a ref name, never a path


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "main/../../x", "a//b", "refs/heads/", "-rf",
                                 "x y", "main.lock", "memflow=../up"])
def test_revision_that_is_a_path_is_refused(tmp_path, bad):
    code, text = cli("render", "--prompt", "a cat", "--revision", bad, "--offline", "-o", tmp_path / "v.mp4")
    assert code == 2 and "--revision" in text and "commit hash" in flat(text) and "Traceback" not in text, text
    assert not (tmp_path / "v.mp4").exists()
    code, text = cli("download", "--wan-revision", bad)
    assert code == 2 and "commit hash" in flat(text), text


def test_good_revisions_pass_the_check():
    from memflow_cli.weights.hub import check_revision

    for good in ("main", "v1.0", "refs/pr/3", "release/2025-01_b", "a1b2c3d", "0" * 40):
        assert check_revision(good) == good


# ------------------------------------------------------------------------------------------------
# every input file goes through one check: a FIFO or a device never hangs a render


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
@pytest.mark.parametrize("option", ["timeline", "--control", "--mask", "--reference", "--video", "--lora"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_fifo_or_device_as_any_input_is_refused_without_opening(tiny, tmp_path, option, kind):
    if kind == "device" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    special = Path("/dev/zero")
    if kind == "fifo":
        special = tmp_path / "input.mp4"
        os.mkfifo(special)  # opening it for reading blocks until a writer comes: never, here
    args = [special] if option == "timeline" else [timeline(tmp_path), option, special]
    with deadline(60):
        code, text = cli("render", *args, "--weights-dir", tiny, "-o", tmp_path / "v.mp4", "--quiet")
    assert code == 2, text
    assert "pipe, socket or device" in flat(text) and str(special) in flat(text) and "Traceback" not in text


def test_weight_file_that_is_a_device_is_refused():
    from memflow_cli.model.weights import read_state_dict
    from memflow_cli.errors import CheckpointError

    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with deadline(30), pytest.raises(CheckpointError, match="pipe, socket or device"):
        read_state_dict("/dev/zero")


# ------------------------------------------------------------------------------------------------
# a batch never overwrites one of its own inputs


def test_batch_output_that_is_another_items_input_is_refused(tiny, tmp_path):
    x = timeline(tmp_path, "x.json")
    precious = tmp_path / "x.manifest.json"
    precious.write_text('{"my": "notes"}')  # an input of the batch, and the manifest name of x.json's output
    code, text = cli("render", x, precious, "--output-dir", tmp_path, "--weights-dir", tiny, "--quiet", "-y")
    assert code == 2 and "would overwrite the input" in flat(text) and str(precious) in flat(text), text
    assert precious.read_text() == '{"my": "notes"}' and not (tmp_path / "x.mp4").exists()
    inside = tmp_path / "y.resume" / "y.json"  # an input inside the checkpoint folder a render removes
    inside.parent.mkdir()
    shutil.copy(x, inside)
    code, text = cli("render", inside, "-o", tmp_path / "y.mp4", "--weights-dir", tiny, "--quiet")
    assert code == 2 and "is inside" in flat(text) and inside.exists(), text


# ------------------------------------------------------------------------------------------------
# -q: a failing batch still says which items failed and why


def test_quiet_batch_names_each_failed_item(tiny, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "2.1", "prompts": []}')
    code, text = cli("render", bad, tmp_path / "missing.json", "--output-dir", tmp_path / "out",
                     "--weights-dir", tiny, "-q")
    assert code == 2
    lines = [line for line in text.splitlines() if line.startswith("failed:")]
    assert len(lines) == 2, text
    assert any("bad.json" in line and "prompts" in line for line in lines)
    assert any("missing.json" in line and "not found" in line for line in lines)
    assert "2 of 2 items did not complete" in text


# ------------------------------------------------------------------------------------------------
# non-finite weights are refused, naming the file, instead of a black video


def lora_file(tiny, path: Path, poison: bool = False, gain: float = 1.0) -> Path:
    delta = low_rank_delta(seed=1, rank=2, config=DiTConfig.from_file(tiny / "config.json"))
    tensors = {k: v * gain if v.is_floating_point() and "alpha" not in k else v for k, v in layouts(delta)["kohya"].items()}
    if poison:
        key = next(k for k in tensors if "lora_up" in k or "lora_B" in k or k.endswith("up.weight"))
        tensors[key] = tensors[key].clone()
        tensors[key][0, 0] = float("nan")
    return write(path, tensors)


@pytest.mark.parametrize("scale", ["1e308", "inf", "nan", "-5000"])
def test_absurd_lora_scale_is_an_input_error(tiny, tmp_path, scale):
    lora = lora_file(tiny, tmp_path / "style.safetensors")
    code, text = cli("render", timeline(tmp_path), "--lora", f"{lora}:{scale}", "--weights-dir", tiny,
                     "-o", tmp_path / "v.mp4", "--quiet")
    assert code == 2 and "LoRA scale" in flat(text) and "Traceback" not in text, text
    doc = json.loads(timeline(tmp_path).read_text())
    doc["settings"]["loras"] = [{"path": str(lora), "scale": 1e308}]
    (tmp_path / "s.json").write_text(json.dumps(doc))
    code, text = cli("render", tmp_path / "s.json", "--weights-dir", tiny, "-o", tmp_path / "v.mp4", "--quiet")
    assert code == 2 and "settings.loras[0].scale" in text and "LoRA scale" in flat(text), text
    assert not (tmp_path / "v.mp4").exists()


def test_lora_with_nan_tensors_is_refused_naming_it(tiny, tmp_path):
    lora = lora_file(tiny, tmp_path / "poison.safetensors", poison=True)
    code, text = cli("render", timeline(tmp_path), "--lora", str(lora), "--weights-dir", tiny,
                     "-o", tmp_path / "v.mp4", "--quiet")
    assert code != 0 and str(lora) in flat(text) and "NaN" in text and "Traceback" not in text, text
    assert not (tmp_path / "v.mp4").exists()


def test_lora_scale_that_overflows_the_dtype_is_refused(tiny, tmp_path):
    lora = lora_file(tiny, tmp_path / "loud.safetensors", gain=100.0)  # delta x 10^4, x 1000 more: beyond fp16
    code, text = cli("render", timeline(tmp_path), "--lora", f"{lora}:1000", "--weights-dir", tiny, "--dtype", "fp16",
                     "-o", tmp_path / "v.mp4", "--quiet")
    assert code != 0 and not (tmp_path / "v.mp4").exists()
    assert str(lora) in flat(text) and "non-finite" in flat(text) and "Traceback" not in text, text


def test_base_weights_with_nan_are_refused_naming_the_file(tiny, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tiny, weights)
    (weights / "memflow.lock.json").unlink(missing_ok=True)
    state = torch.load(weights / "base.pt", weights_only=True)

    def poison(obj):
        for key, value in obj.items():
            if isinstance(value, dict):
                if poison(value):
                    return True
            elif isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 1:
                value.view(-1)[0] = float("nan")
                return True
        return False

    assert poison(state)
    torch.save(state, weights / "base.pt")
    code, text = cli("render", timeline(tmp_path), "--weights-dir", weights, "-o", tmp_path / "v.mp4", "--quiet")
    assert code == 1 and "base.pt" in text and "NaN" in text and "Traceback" not in text, text
    assert not (tmp_path / "v.mp4").exists()


# ------------------------------------------------------------------------------------------------
# a resume checks every field that steers it against the frames actually saved


def interrupted_render(tiny, tmp_path, seconds=2.0, k=0):
    """A render stopped after chunk k: NAME.resume/ holds a checkpoint to continue at chunk k + 1."""
    from memflow_cli.render import Interrupted, RenderOptions, render
    from memflow_cli.render.resume import resume_dir
    from memflow_cli.inputs.timeline import read_timeline

    out = tmp_path / "v.mp4"
    t = read_timeline(timeline(tmp_path, seconds=seconds))

    def stop(chunk):
        if chunk.index == k:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted):
        render(t, RenderOptions(output=out, weights_dir=tiny, overlap=False), on_chunk=stop)
    return out, resume_dir(out)


EDITS = [{"next_chunk": 9}, {"next_chunk": 10**30}, {"next_chunk": 3}, {"next_chunk": 2}, {"next_chunk": 0},
         {"next_chunk": True}, {"frames": 21}, {"next_chunk": 2, "frames": 21}, {"segments": 21},
         {"next_chunk": 2, "frames": 21, "segments": 21}]  # the last: a consistent record, but the state made 1 chunk


def test_resume_with_an_edited_position_is_refused_as_damaged(tiny, tmp_path):
    out, folder = interrupted_render(tiny, tmp_path)
    original = (folder / "meta.json").read_text()
    assert (json.loads(original)["next_chunk"], json.loads(original)["frames"]) == (1, 9)
    for edit in EDITS:
        meta = json.loads(original)
        for key, value in edit.items():
            if key == "segments":
                meta["segments"][0]["frames"] = value
            else:
                meta[key] = value
        (folder / "meta.json").write_text(json.dumps(meta))
        code, text = cli("render", tmp_path / "t.json", "--weights-dir", tiny, "-o", out, "--resume", "--quiet")
        assert code == 2 and "checkpoint" in flat(text) and "Traceback" not in text, (edit, text)
        assert not out.exists()  # never a short video marked complete
    (folder / "meta.json").write_text(original)
    code, text = cli("render", tmp_path / "t.json", "--weights-dir", tiny, "-o", out, "--resume", "--quiet")
    assert code == 0 and json.loads((tmp_path / "v.manifest.json").read_text())["video"]["frames"] == 32, text


# ------------------------------------------------------------------------------------------------
# NAME.resume/ exists only complete: a failed render never leaves one that blocks the next render


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def hidden(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob(".v.resume.*"))


def test_failure_before_a_checkpoint_leaves_nothing_behind(tiny, tmp_path):
    from memflow_cli.render import RenderOptions, render
    from memflow_cli.render.resume import resume_dir
    from memflow_cli.inputs.timeline import read_timeline

    out = tmp_path / "v.mp4"

    def crash(chunk):
        if chunk.index == 1:
            raise RuntimeError("the machine fell over")

    with pytest.raises(RuntimeError, match="fell over"):
        render(read_timeline(timeline(tmp_path, seconds=1.3)), RenderOptions(output=out, weights_dir=tiny, overlap=False,
                                                                              checkpoint_every=0), on_chunk=crash)
    assert not resume_dir(out).exists() and hidden(tmp_path) == []
    code, text = cli("render", tmp_path / "t.json", "--weights-dir", tiny, "-o", out, "--quiet")
    assert code == 0, text


def test_a_save_that_fails_keeps_the_previous_checkpoint_whole(tiny, tmp_path, monkeypatch):
    import memflow_cli.render.resume as resume
    from memflow_cli.render import RenderOptions, render
    from memflow_cli.inputs.timeline import read_timeline

    out = tmp_path / "v.mp4"
    saves, save = [], torch.save

    def full_disk(obj, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:
            Path(path).write_bytes(b"half")
            raise OSError(28, "No space left on device")
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(resume.torch, "save", full_disk)
    with pytest.raises(OSError):
        render(read_timeline(timeline(tmp_path, seconds=2.0)),
               RenderOptions(output=out, weights_dir=tiny, overlap=False, checkpoint_every=1e-9))
    monkeypatch.undo()
    meta = json.loads((resume.resume_dir(out) / "meta.json").read_text())
    assert meta["next_chunk"] == 1 and meta["input"] == str(tmp_path / "t.json")  # the first save, complete
    assert hidden(tmp_path) == []  # neither the half-built checkpoint nor the work folder is left
    code, text = cli("render", tmp_path / "t.json", "--weights-dir", tiny, "-o", out, "--resume", "--quiet")
    assert code == 0 and json.loads((tmp_path / "v.manifest.json").read_text())["video"]["frames"] == 32, text


def test_stale_leftovers_are_cleaned_and_an_old_checkpoint_restored(tiny, tmp_path):
    from memflow_cli.render.outputs import _host
    from memflow_cli.render.resume import clean_stale, resume_dir

    out = tmp_path / "v.mp4"
    folder = resume_dir(out)
    pid = dead_pid()
    junk = tmp_path / f".v.resume.memflow-{pid}@{_host()}.0badc0de.tmp"
    junk.mkdir()
    (junk / "state-000001.pt").write_bytes(b"half")
    live = tmp_path / f".v.resume.memflow-{os.getpid()}@{_host()}.0123abcd.work"  # ours: a live render's
    live.mkdir()
    old = tmp_path / f".v.resume.memflow-{pid}@{_host()}.00c0ffee.old"
    old.mkdir()
    (old / "meta.json").write_text("{}")
    assert clean_stale(folder) == [junk]  # the previous checkpoint is renamed back (a crash between two renames)
    assert folder.is_dir() and (folder / "meta.json").read_text() == "{}" and live.is_dir()
    shutil.rmtree(folder)
    live.rmdir()

    folder.mkdir()  # what an older version left after a failure: an empty or half-written folder
    (folder / "seg-0000.mkv.part").write_bytes(b"x")
    code, text = cli("render", timeline(tmp_path), "--weights-dir", tiny, "-o", out)
    assert code == 0 and "incomplete checkpoint" in flat(text), text
    assert not folder.exists() and hidden(tmp_path) == []

    (tmp_path / "v2.resume").mkdir()  # a folder of the user's under that name is not ours to remove
    (tmp_path / "v2.resume" / "notes.txt").write_text("mine")
    code, text = cli("render", tmp_path / "t.json", "--weights-dir", tiny, "-o", tmp_path / "v2.mp4", "--quiet")
    assert code == 2 and "not a memflow checkpoint" in flat(text), text
    assert (tmp_path / "v2.resume" / "notes.txt").exists()


def test_checkpoint_of_another_timeline_is_named(tiny, tmp_path):
    out, folder = interrupted_render(tiny, tmp_path)
    other = tmp_path / "other.json"
    doc = json.loads((tmp_path / "t.json").read_text())
    doc["prompts"][0]["prompts"][0]["text"] = "a green kite"
    other.write_text(json.dumps(doc))
    code, text = cli("render", other, "--weights-dir", tiny, "-o", out, "--quiet")
    assert code == 2 and "an interrupted render of" in flat(text) and str(tmp_path / "t.json") in flat(text), text
    assert "--resume to continue" not in flat(text) and folder.is_dir()


# ------------------------------------------------------------------------------------------------
# two renders to the same output at once: the second is refused


def test_a_second_render_of_the_same_output_is_refused(tiny, tmp_path):
    from memflow_cli.render.outputs import _host, lock_path

    out = tmp_path / "v.mp4"
    lock = lock_path(out)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a render still running
    try:
        lock.write_text(f"{holder.pid}@{_host()}\n")
        code, text = cli("render", timeline(tmp_path), "--weights-dir", tiny, "-o", out, "--quiet")
        assert code == 2 and "another render" in flat(text) and str(holder.pid) in text, text
        assert not out.exists() and lock.read_text() == f"{holder.pid}@{_host()}\n"
    finally:
        holder.kill()
        holder.wait()
    lock.write_text(f"{dead_pid()}@{_host()}\n")  # stale: its render is gone
    code, text = cli("render", tmp_path / "t.json", "--weights-dir", tiny, "-o", out, "--quiet")
    assert code == 0 and out.exists(), text
    assert not lock.exists() and not list(tmp_path.glob(".v.*"))  # released, no temporaries


def test_the_lock_is_exclusive_between_processes(tmp_path):
    """Two processes race for one output's lock: exactly one holds it at a time."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from memflow_cli.render.outputs import output_lock, OutputBusy\n"
        "tries = Path(sys.argv[2])\n"
        "def tried():\n"
        "    with open(tries, 'a') as f: f.write('x')\n"
        "try:\n"
        "    with output_lock(sys.argv[1]):\n"
        "        tried(); print('held', flush=True)\n"
        "        end = time.time() + 60\n"
        "        while tries.read_text().count('x') < 2 and time.time() < end: time.sleep(0.05)\n"
        "except OutputBusy as exc:\n"
        "    tried(); print('busy', exc, flush=True)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "v.mp4"), str(tmp_path / "tries")],
                              stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = sorted(p.communicate(timeout=60)[0].split()[0] for p in procs)
    assert outputs == ["busy", "held"]
    assert not (tmp_path / ".v.mp4.lock").exists()


# ------------------------------------------------------------------------------------------------
# out of memory on the CPU: a message with the resolution and the plan, exit 1, never a traceback


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to "
                 "allocate 274877906944 bytes."),
    MemoryError()])
def test_out_of_memory_is_a_message_naming_the_resolution(tiny, tmp_path, monkeypatch, failure):
    from memflow_cli.engine.generator import StreamingGenerator

    def allocate(self, *args, **kwargs):
        raise failure

    monkeypatch.setattr(StreamingGenerator, "next_chunk", allocate)
    out = tmp_path / "v.mp4"
    code, text = cli("render", timeline(tmp_path), "--weights-dir", tiny, "-o", out, "--resolution", "48x32")
    assert code == 1 and "Traceback" not in text, text
    assert "out of memory on the CPU rendering 48x32" in flat(text) and "memory plan needs" in flat(text)
    if isinstance(failure, RuntimeError):
        assert "256.0 GiB" in flat(text)
    assert not out.exists() and not list(tmp_path.glob(".v.*")) and not (tmp_path / "v.resume").exists()


def test_other_runtime_errors_are_not_called_out_of_memory(tiny, tmp_path, monkeypatch):
    from memflow_cli.engine.generator import StreamingGenerator
    from memflow_cli.render import RenderOptions, render
    from memflow_cli.inputs.timeline import read_timeline

    def broken(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(StreamingGenerator, "next_chunk", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        render(read_timeline(timeline(tmp_path)), RenderOptions(output=tmp_path / "v.mp4", weights_dir=tiny))


# ------------------------------------------------------------------------------------------------
# the chunk plan is O(blocks) in memory; a length no file can hold is refused up front


def eager_plan(timeline, blend_method="linear"):
    """The chunk plan as the one-entry-per-chunk loop computed it (the oracle for the lazy plan)."""
    from memflow_cli.inputs.schedule import Blend, Transition, chunk_start_frame, chunks_for_frames, first_chunk_at_or_after

    blocks = sorted(timeline.blocks, key=lambda b: b.start)
    total = round(timeline.end * 16)
    count = chunks_for_frames(total)
    starts = {}
    for i, block in enumerate(blocks):
        chunk = 0 if i == 0 else first_chunk_at_or_after(round(block.start * 16))
        if chunk < count:
            starts[chunk] = i
    out, current, active, pending, done = [], None, 0, None, 0
    for c in range(count):
        if c in starts:
            active = starts[c]
            target = Blend.of(blocks[active], blend_method)
            if current is None or blocks[active].transition_steps <= 0 or target == current:
                nxt, pending = target, None
            else:
                pending, done = (current, target, blocks[active].transition_steps, blocks[active].interpolation), 0
        if pending is not None:
            source, target, steps, method = pending
            done += 1
            if done >= steps:
                nxt, pending = target, None
            else:
                nxt = Transition(source, target, done / steps, method)
        elif c not in starts:
            nxt = current
        first = chunk_start_frame(c)
        out.append((c, first, min(9 if c == 0 else 12, total - first), nxt, nxt != current, active))
        current = nxt
    return total, out


def test_lazy_plan_equals_the_per_chunk_loop():
    import random

    from memflow_cli.inputs.schedule import plan
    from memflow_cli.inputs.timeline import Block, Timeline, WeightedPrompt

    rng = random.Random(22)
    for _ in range(200):
        blocks, t = [], 0.0
        for _ in range(rng.randint(1, 6)):
            start = t + rng.choice([0.0, 0.1, 0.5, 1.0, 2.3])  # overlaps of one chunk, gaps, ordinary switches
            end = start + rng.choice([0.2, 0.7, 1.5, 3.0])
            texts = rng.sample(["a", "b", "c", "d"], rng.randint(1, 2))
            blocks.append(Block(start, end, tuple(WeightedPrompt(x, rng.choice([1.0, 2.0])) for x in texts),
                                rng.choice([0, 0, 1, 2, 3, 7]), rng.choice(["linear", "slerp"])))
            t = end
        timeline = Timeline(tuple(blocks))
        for method in ("linear", "slerp"):
            schedule = plan(timeline, blend_method=method)
            total, expected = eager_plan(timeline, method)
            got = [(c.index, c.first_frame, c.frames, c.conditioning, c.changed, c.block) for c in schedule.chunks]
            assert schedule.total_frames == total and got == expected
            assert schedule.switches == [c for c, *_, changed, _ in expected[1:] if changed]
            assert [c.index for c in schedule.chunks[2:5]] == [e[0] for e in expected[2:5]]


def test_a_very_long_plan_takes_no_memory_and_an_impossible_one_is_refused(tmp_path):
    import tracemalloc

    from memflow_cli.errors import InputError
    from memflow_cli.inputs.schedule import plan
    from memflow_cli.inputs.timeline import Block, Timeline, WeightedPrompt

    prompts = (WeightedPrompt("a", 1.0),)
    long = Timeline((Block(0.0, 1e8, prompts), Block(5e7, 1e8, (WeightedPrompt("b", 1.0),), 4)))  # 1.6e9 frames
    tracemalloc.start()
    schedule = plan(long, max_hours=1e300)
    assert schedule.num_chunks == 133_333_334 and schedule.chunks[-1].frames == 7 and schedule.switches[:1] == [66_666_667]
    assert [c.index for c in schedule.chunks[5:8]] == [5, 6, 7] and schedule.blocks == 2
    assert tracemalloc.get_traced_memory()[1] < 2**20  # a MiB: a plan entry per chunk would be ~20 GB
    tracemalloc.stop()
    with pytest.raises(InputError, match="at most 2,147,483,647 frames"):
        plan(Timeline((Block(0.0, 1e20, prompts),)), max_hours=1e300)
    path = tmp_path / "long.json"
    path.write_text(json.dumps({"version": "2.1", "prompts": [
        {"startTime": 0, "endTime": 1e20, "prompts": [{"text": "a slow sunrise", "weight": 1}]}]}))
    code, text = cli("render", path, "--max-hours", "1e300", "--offline")
    assert code == 2 and "at most 2,147,483,647 frames" in flat(text) and "Traceback" not in text, text
