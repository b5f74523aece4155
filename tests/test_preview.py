"""The preview: NAME.partial.mp4 plays while the render runs (a fragmented MP4), and becomes NAME.mp4 by a remux.

What is checked: the partial file is there from the first frames, readable while frames are still being
written and its frames are the final file's first frames; the finished file has the direct writer's H.264
stream (so the same decoded frames), BT.709 tags and +faststart; an interrupt keeps the fragmented file with
every frame written and a manifest that says it is partial; a failure leaves nothing; a real render (tiny
weights) shows its partial file while it runs, and --no-preview gives the same frames without one.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from memflow_cli.render import RenderOptions, render
from memflow_cli.inputs.timeline import read_timeline
from memflow_cli.render.video import VideoError, VideoWriter, colour_tags

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
W, H = 32, 32


def decoded(path: Path) -> list[bytes]:
    """Every frame ffmpeg can decode from `path` (a growing file: those of its complete fragments)."""
    result = subprocess.run([FFMPEG, "-v", "quiet", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                            capture_output=True)
    data = result.stdout
    size = W * H * 3
    return [data[i:i + size] for i in range(0, len(data) - len(data) % size, size)]


def h264(path: Path) -> bytes:
    """The H.264 elementary stream of a file (the encoder's output, whatever the container)."""
    return subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-c", "copy", "-bsf:v", "h264_mp4toannexb",
                           "-f", "h264", "-"], capture_output=True, check=True).stdout


def top_boxes(path: Path) -> list[str]:
    data, boxes, at = path.read_bytes(), [], 0
    while at + 8 <= len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        boxes.append(data[at + 4:at + 8].decode("latin-1"))
        if size < 8:
            break
        at += size
    return boxes


def chunks(count: int, seed: int = 0):
    """Moving noise with some structure: 12-frame chunks as a render writes them."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    for k in range(count):
        yield np.stack([np.roll(base, 12 * k + i, axis=1) // (1 + (k % 3)) for i in range(12)])


def write_all(path: Path, preview: bool, count: int = 6, **kw) -> VideoWriter:
    with VideoWriter(path, W, H, preview=preview, **kw) as writer:
        for frames in chunks(count):
            writer.write(frames)
    return writer


def test_partial_file_plays_while_frames_are_written(tmp_path):
    out = tmp_path / "v.mp4"
    partial = tmp_path / "v.partial.mp4"
    seen = []
    writer = VideoWriter(out, W, H, preview=True)
    with writer:
        for k, frames in enumerate(chunks(14)):
            writer.write(frames)
            if k == 0:
                assert partial.is_file()  # there from the first chunk on: a valid (empty_moov) MP4 already
                assert "moov" in top_boxes(partial)
            deadline = time.monotonic() + 10
            while k == 13 and not seen and time.monotonic() < deadline:  # ffmpeg works beside us: give it time
                seen = decoded(partial)
                time.sleep(0.05)
        assert not out.exists()  # nothing claims to be complete while writing
        assert 0 < len(seen) <= writer.frames  # the frames of the fragments flushed so far, never more
        assert "moof" in top_boxes(partial)  # fragments, each playable on its own
    final = decoded(out)
    assert len(final) == 14 * 12
    assert seen == final[: len(seen)]  # what played during the render is what the final file holds
    assert not partial.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_finished_file_is_the_direct_writers_stream_remuxed(tmp_path):
    direct = write_all(tmp_path / "direct.mp4", preview=False).path
    writer = write_all(tmp_path / "preview.mp4", preview=True)
    remuxed = writer.path
    assert writer.remux_seconds is not None and writer.remux_seconds >= 0
    assert h264(remuxed) == h264(direct)  # the same encoder output, byte for byte: a remux, not a re-encode
    assert decoded(remuxed) == decoded(direct) and len(decoded(direct)) == 72
    # +faststart: the index before the data, no fragments left
    boxes = top_boxes(remuxed)
    assert boxes.index("moov") < boxes.index("mdat") and "moof" not in boxes
    assert colour_tags(remuxed) == colour_tags(direct)
    assert colour_tags(remuxed)["colorspace"] == "bt709" and colour_tags(remuxed)["color_range"] == "tv"
    # only the container's layout may differ (the btrt box's bitrate fields); same size
    a, b = direct.read_bytes(), remuxed.read_bytes()
    assert len(a) == len(b)
    differing = [i for i in range(len(a)) if a[i] != b[i]]
    assert len(differing) <= 16
    btrt = a.index(b"btrt")
    assert all(btrt - 4 <= i < btrt + 16 for i in differing)


def test_interrupt_keeps_the_fragmented_file_with_every_frame(tmp_path):
    out = tmp_path / "v.mp4"
    manifests = []

    def manifest(path, complete):
        manifests.append((path.name, complete))
        return {"video": {"path": str(path), "complete": bool(complete)}}

    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out, W, H, preview=True, manifest=manifest) as writer:
            for frames in chunks(5):
                writer.write(frames)
            raise KeyboardInterrupt
    partial = tmp_path / "v.partial.mp4"
    assert writer.partial == partial and not out.exists()
    assert len(decoded(partial)) == 60  # ffmpeg finished the file: the encoder's delay is flushed too
    assert manifests == [("v.partial.mp4", None), ("v.partial.mp4", False)]  # in progress, then partial
    assert json.loads((tmp_path / "v.partial.manifest.json").read_text())["video"]["complete"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.partial.manifest.json", "v.partial.mp4"]


def test_an_error_leaves_nothing_and_an_existing_video_untouched(tmp_path):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"old video")
    with pytest.raises(RuntimeError):
        with VideoWriter(out, W, H, preview=True, manifest=lambda p, c: {"complete": c}) as writer:
            writer.write(next(chunks(1)))
            raise RuntimeError("boom")
    assert out.read_bytes() == b"old video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_a_failed_remux_keeps_the_partial_file_and_replaces_nothing(tmp_path, monkeypatch):
    out = tmp_path / "v.mp4"
    writer = VideoWriter(out, W, H, preview=True, manifest=lambda p, c: {"complete": c})
    writer.write(next(chunks(1)))
    writer._ffmpeg = str(tmp_path / "no-such-ffmpeg")  # the remux cannot run
    with pytest.raises(VideoError, match="could not remux .*kept .*v.partial.mp4 .all 12 frames"):
        writer.finish()
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.partial.manifest.json", "v.partial.mp4"]
    assert json.loads((tmp_path / "v.partial.manifest.json").read_text()) == {"complete": False}
    assert len(decoded(tmp_path / "v.partial.mp4")) == 12


def test_a_refused_final_rename_keeps_the_partial_file_and_the_old_video(tmp_path, monkeypatch):
    import errno

    from memflow_cli.render.outputs import PublishError

    out = tmp_path / "v.mp4"
    out.write_bytes(b"old video")
    real = os.replace

    def replace(src, dst):
        if os.fspath(dst) == os.fspath(out):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(PublishError, match="Operation not permitted"):
        with VideoWriter(out, W, H, preview=True, manifest=lambda p, c: {"complete": c}) as writer:
            writer.write(next(chunks(1)))
    assert out.read_bytes() == b"old video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4", "v.partial.manifest.json", "v.partial.mp4"]
    assert json.loads((tmp_path / "v.partial.manifest.json").read_text()) == {"complete": False}
    assert len(decoded(tmp_path / "v.partial.mp4")) == 12


# -- a render (tiny weights) ---------------------------------------------------------------------

SCENE = {
    "version": "2.1",
    "prompts": [
        {"startTime": 0, "endTime": 2.5, "prompts": [{"text": "A fox walks through snow", "weight": 1}]},
        {"startTime": 2.5, "endTime": 5.0, "prompts": [{"text": "A lighthouse on a cliff at dusk", "weight": 1}]},
        {"startTime": 5.0, "endTime": 8.0, "prompts": [{"text": "A red kite over green hills", "weight": 2},
                                                       {"text": "A storm", "weight": 1}]},
    ],
    "settings": {"seed": 3},
}

pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture(scope="module")
def rendered(tiny, tmp_path_factory):
    """One render with preview and sheet, watched chunk by chunk; one with neither."""
    folder = tmp_path_factory.mktemp("preview")
    path = folder / "scene.json"
    path.write_text(json.dumps(SCENE))
    timeline = read_timeline(path)
    out = folder / "scene.mp4"
    watched = []

    def on_chunk(chunk):  # the render waits here: look at what is on disk now
        partial = out.with_name("scene.partial.mp4")
        manifest = out.with_name("scene.partial.manifest.json")
        sheet = out.with_name("scene.partial.sheet.png")
        watched.append({"chunk": chunk.index, "partial": partial.is_file(), "frames": decoded(partial),
                        "manifest": json.loads(manifest.read_text()) if manifest.is_file() else None,
                        "sheet": sheet.read_bytes() if sheet.is_file() else None, "final": out.exists()})

    cache = folder / "cache"
    summary = render(timeline, RenderOptions(output=out, weights_dir=tiny, width=W, height=H, overlap=False,
                                             embedding_cache=cache), on_chunk=on_chunk)
    plain = render(timeline, RenderOptions(output=folder / "plain.mp4", weights_dir=tiny, width=W, height=H,
                                           overlap=False, preview=False, sheet=False, embedding_cache=cache))
    return {"folder": folder, "out": out, "watched": watched, "summary": summary, "plain": plain,
            "timeline": timeline}


def test_render_partial_file_is_readable_while_rendering(rendered):
    watched, out = rendered["watched"], rendered["out"]
    assert len(watched) == rendered["summary"].chunks == 11
    assert all(w["partial"] and not w["final"] for w in watched)  # from the first chunk; nothing complete yet
    first = watched[0]["manifest"]["video"]
    assert first["complete"] is False and first["in_progress"] is True and first["sha256"] is None
    counts = [len(w["frames"]) for w in watched]
    assert counts == sorted(counts) and counts[-1] > 0  # it grows, and plays before the render ends
    final = decoded(out)
    assert len(final) == 128
    for w in watched:
        assert w["frames"] == final[: len(w["frames"])]  # each moment's file is a prefix of the finished video
    folder = rendered["folder"]
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith("scene"))
    assert names == ["scene.json", "scene.manifest.json", "scene.mp4", "scene.sheet.png"]  # the partial went
    manifest = json.loads((folder / "scene.manifest.json").read_text())
    assert manifest["video"]["complete"] is True and manifest["timings_s"]["remux"] >= 0


def test_no_preview_renders_the_same_stream_without_a_partial_file(rendered):
    folder = rendered["folder"]
    assert h264(rendered["out"]) == h264(folder / "plain.mp4")
    assert decoded(rendered["out"]) == decoded(folder / "plain.mp4")
    plain = json.loads((folder / "plain.manifest.json").read_text())
    assert "sheet" not in plain and "remux" not in plain["timings_s"]
    assert not (folder / "plain.sheet.png").exists() and not (folder / "plain.partial.mp4").exists()
    assert re.fullmatch(r"[0-9a-f]{64}", plain["video"]["sha256"])


def test_render_sheet_fills_in_while_rendering_and_is_listed_in_the_manifest(rendered):
    from PIL import Image

    from memflow_cli.weights.hub import sha256_file
    from memflow_cli.render.sheet import PENDING, ContactSheet, SheetBlock

    folder = rendered["folder"]
    manifest = json.loads((folder / "scene.manifest.json").read_text())
    entry = manifest["sheet"]
    assert entry["path"].endswith("scene.sheet.png") and entry["tiles"] == 3 == len(SCENE["prompts"])
    assert entry["tiles_rendered"] == 3 and sha256_file(folder / "scene.sheet.png") == entry["sha256"]
    blocks = [SheetBlock(b["start"], b["end"], tuple(map(tuple, b["prompts"]))) for b in manifest["input"]["blocks"]]
    sheet = ContactSheet(blocks, 128, W, H, title="scene.mp4")
    assert [lab[0] for lab in sheet.labels()] == ["0:00 - 0:02.5", "0:02.5 - 0:05", "0:05 - 0:08"]
    assert sheet.labels()[2][1] == "A red kite over green hills + 1"

    def pending(png: bytes) -> int:
        import io

        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        return sum(bool((image[t:b, l:r] == PENDING).all()) for l, t, r, b in map(sheet.tile_box, range(3)))

    during = [pending(w["sheet"]) for w in rendered["watched"] if w["sheet"] is not None]
    assert during[0] == 3  # there from the first chunk on, grey until a tile's frame (the first: 20) passes
    assert during == sorted(during, reverse=True) and during[-1] == 0  # tiles fill in as blocks pass
    assert pending((folder / "scene.sheet.png").read_bytes()) == 0
    frames = decoded(rendered["out"])
    image = np.asarray(Image.open(folder / "scene.sheet.png").convert("RGB"))
    from memflow_cli.render.sheet import thumbnail

    for i, tile in enumerate(sheet.tiles):  # each tile shows its block's middle frame (as rendered, before encoding)
        l, t, r, b = sheet.tile_box(i)
        shown = image[t:b, l:r].astype(int)
        diffs = [np.abs(shown - np.asarray(thumbnail(np.frombuffer(f, np.uint8).reshape(H, W, 3))).astype(int)).mean()
                 for f in frames]
        assert shown.std() > 5 and int(np.argmin(diffs)) == tile.frame  # that frame, up to the encoder's loss
