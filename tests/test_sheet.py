"""The contact sheet: a tile per block (several for long ones), labelled from the timeline, made while a
render runs and from a finished video (`memflow sheet`)."""

import json
import shutil
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from cli_run import cli
from memflow_cli.render.sheet import PENDING, ContactSheet, SheetBlock, clock, prompt_start, thumbnail, tiles_for

def block(start, end, *prompts):
    return SheetBlock(start, end, tuple(prompts) or (("a prompt", 1.0),))


def test_one_tile_per_block_at_its_middle_several_for_long_blocks():
    blocks = [block(0, 10), block(10, 55), block(55, 55 + 20 * 60)]
    total = round((55 + 1200) * 16)
    tiles = tiles_for(blocks, total)
    assert [sum(t.block == i for t in tiles) for i in range(3)] == [1, 2, 8]  # ceil(s / 30), at most 8
    assert tiles[0].frame == 80  # frames 0..159: the middle one
    assert [t.frame for t in tiles[1:3]] == [160 + 720 // 4, 160 + 3 * 720 // 4]  # middles of two halves
    assert tiles[0].label == ("0:00 - 0:10", "a prompt")
    assert tiles[1].label[0] == "0:10 - 0:55  (1/2 at 0:21.2)"
    assert tiles[3].label[0].startswith("0:55 - 20:55  (1/8 at ")


def test_labels_come_from_the_timeline():
    assert clock(0) == "0:00" and clock(2.5) == "0:02.5" and clock(3725) == "1:02:05"
    assert prompt_start([("A fox  walks\nthrough snow", 1.0)]) == "A fox walks through snow"
    assert prompt_start([("a storm", 1.0), ("A red kite", 2.0), ("rain", 0.5)]) == "A red kite + 2"
    long = "word " * 100
    assert prompt_start([(long, 1)]).endswith("...") and len(prompt_start([(long, 1)])) <= 120


def test_sheet_tiles_are_the_frames_and_pending_blocks_are_grey(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (48, 24, 40, 3), dtype=np.uint8)  # 3 s at 16 fps, 40x24
    blocks = [block(0, 1, ("first block prompt", 1)), block(1, 2, ("second", 1)), block(2, 3, ("third", 1))]
    sheet = ContactSheet(blocks, 48, 40, 24, live=tmp_path / "v.partial.sheet.png", temp_for=tmp_path / "v.mp4")
    sheet.add(frames[:20])  # the first block's middle (frame 8) has passed, the second's (24) not yet
    assert sheet.writes == 1 and (tmp_path / "v.partial.sheet.png").is_file()
    image = np.asarray(Image.open(tmp_path / "v.partial.sheet.png").convert("RGB"))
    assert len(sheet.tiles) == 3
    l, t, r, b = sheet.tile_box(0)
    assert np.array_equal(image[t:b, l:r], np.asarray(thumbnail(frames[8])))
    l, t, r, b = sheet.tile_box(1)
    assert (image[t:b, l:r] == PENDING).all()  # not rendered yet
    sheet.add(frames[20:])
    assert sheet.complete and sheet.writes == 2  # once per batch of frames that brought tiles
    image = np.asarray(Image.open(sheet.write(tmp_path / "v.sheet.png")).convert("RGB"))
    for i, frame in enumerate((8, 24, 40)):
        l, t, r, b = sheet.tile_box(i)
        assert np.array_equal(image[t:b, l:r], np.asarray(thumbnail(frames[frame])))
        assert image[t:b, l:r].std() > 10  # a picture, not a blank tile
    assert [lab[0] for lab in sheet.labels()] == ["0:00 - 0:01", "0:01 - 0:02", "0:02 - 0:03"]
    # the label area is drawn: text pixels under each tile
    below = image[sheet.tile_box(0)[3] + 2: sheet.tile_box(0)[3] + 30, sheet.tile_box(0)[0]: sheet.tile_box(0)[2]]
    assert (below > 200).any()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # written via temporaries, renamed


@pytest.fixture
def finished(tmp_path):
    """A finished 3 s video written by the renderer's writer, with a manifest listing three blocks."""
    from memflow_cli.render.video import VideoWriter

    rng = np.random.default_rng(2)
    out = tmp_path / "scene.mp4"
    manifest = {"input": {"blocks": [
        {"start": 0, "end": 1.0, "prompts": [["A fox walks through snow", 1]]},
        {"start": 1.0, "end": 2.5, "prompts": [["A lighthouse on a cliff at dusk", 1], ["fog", 0.5]]},
        {"start": 2.5, "end": 3.0, "prompts": [["A red kite over green hills", 1]]}]},
        "video": {"frames": 48, "complete": True}}
    with VideoWriter(out, 32, 32, manifest=lambda path, complete: manifest) as writer:
        for k in range(4):
            writer.write(np.repeat(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 12, axis=0))
    return out


def frames_of(path: Path) -> list[np.ndarray]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


def test_memflow_sheet_for_a_finished_video(finished, tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    video = folder / "copy.mp4"
    shutil.copy(finished, video)
    manifest = finished.with_name("scene.manifest.json")
    code, text = cli("sheet", video, "--manifest", manifest)
    assert code == 0, text
    assert "3 tiles for 3 blocks" in text
    image = np.asarray(Image.open(folder / "copy.sheet.png").convert("RGB"))
    data = json.loads(manifest.read_text())
    blocks = [SheetBlock(b["start"], b["end"], tuple(map(tuple, b["prompts"]))) for b in data["input"]["blocks"]]
    sheet = ContactSheet(blocks, 48, 32, 32, title="copy.mp4")
    frames = frames_of(video)
    assert [t.frame for t in sheet.tiles] == [8, 28, 44]
    for i, tile in enumerate(sheet.tiles):  # each tile is the decoded video's frame at the block's middle
        l, t, r, b = sheet.tile_box(i)
        assert np.array_equal(image[t:b, l:r], np.asarray(thumbnail(frames[tile.frame])))
        assert image[t:b, l:r].std() > 10
    assert sheet.labels()[1] == ("0:01 - 0:02.5", "A lighthouse on a cliff at dusk + 1")
    # the default manifest is the video's sibling
    code, text = cli("sheet", finished, "-o", tmp_path / "s.png")
    assert code == 0 and (tmp_path / "s.png").is_file(), text
    code, text = cli("sheet", finished, "-o", tmp_path / "s.mp4")
    assert code == 2 and "expected a .png" in text
    before = (tmp_path / "s.png").read_bytes()
    code, text = cli("sheet", finished, "-o", tmp_path / "s.png")  # an existing sheet is not replaced silently
    assert code == 2 and "s.png: exists; add -y/--overwrite" in text
    assert (tmp_path / "s.png").read_bytes() == before
    assert cli("sheet", finished, "-o", tmp_path / "s.png", "-y")[0] == 0


def test_memflow_sheet_refuses_bad_input_naming_the_file(finished, tmp_path):
    out = finished
    code, text = cli("sheet", tmp_path / "missing.mp4")
    assert code == 2 and "missing.mp4: video file not found" in text
    video = tmp_path / "sub" / "v.mp4"
    video.parent.mkdir()
    shutil.copy(out, video)
    code, text = cli("sheet", video)
    assert code == 2 and "v.manifest.json: no such manifest" in text and "--manifest" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, text = cli("sheet", video, "--manifest", bad)
    assert code == 2 and "bad.json: not valid JSON" in text
    data = json.loads(out.with_name("scene.manifest.json").read_text())
    data["input"]["blocks"][1]["start"] = "soon"
    bad.write_text(json.dumps(data))
    code, text = cli("sheet", video, "--manifest", bad)
    assert code == 2 and "bad.json: input.blocks[1].start: expected a time in seconds" in text
    del data["input"]
    bad.write_text(json.dumps(data))
    code, text = cli("sheet", video, "--manifest", bad)
    assert code == 2 and "bad.json: input:" in text
    notvideo = tmp_path / "sub" / "n.mp4"
    notvideo.write_bytes(b"this is not a video")
    code, text = cli("sheet", notvideo, "--manifest", out.with_name("scene.manifest.json"))
    assert code == 2 and "n.mp4: cannot decode it as a video" in text
    assert "Traceback" not in text
