"""The package's face: what the README's Python section shows works as written, on tiny weights."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.usefixtures("isolated")


def test_load_then_render_many_timelines_through_one_pipeline(tiny, tmp_path):
    import memflow_cli

    timeline = tmp_path / "t.json"
    timeline.write_text(json.dumps({"prompts": [{"text": "a red fox in snow", "startTime": 0, "endTime": 1}]}))
    pipe = memflow_cli.load(weights_dir=tiny, width=32, height=32, output_dir=tmp_path)
    assert isinstance(pipe, memflow_cli.Pipeline)
    first = pipe.render(memflow_cli.Timeline.read(timeline))
    assert first.complete and first.frames == first.total_frames > 0
    assert (tmp_path / "t.mp4").exists()
    model = pipe._model
    second = pipe.render(memflow_cli.Timeline.from_prompt("a blue bird", seconds=1))
    assert second.complete and pipe._model is model  # the parts loaded once, used again
    assert isinstance(first, memflow_cli.RenderSummary)


def test_load_refuses_unknown_settings_and_models(tiny):
    import memflow_cli

    with pytest.raises(TypeError, match="colour"):
        memflow_cli.load(weights_dir=tiny, colour="red")
    with pytest.raises(memflow_cli.MemflowError):
        memflow_cli.load("no-such-model", weights_dir=tiny)


def test_the_streaming_api_is_at_the_face():
    import memflow_cli
    from memflow_cli.engine.generator import StreamingGenerator, StreamSettings

    assert memflow_cli.StreamingGenerator is StreamingGenerator
    assert memflow_cli.StreamSettings is StreamSettings
    assert memflow_cli.RenderOptions(seed=3).seed == 3
    with pytest.raises(AttributeError):
        memflow_cli.no_such_name  # noqa: B018


def test_importing_the_package_loads_no_layer():
    code = ("import sys, memflow_cli; "
            "print(sorted(m for m in sys.modules if m.startswith('memflow_cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_readme_python_example_runs_as_written(tiny, tmp_path):
    """The README's first Python block, run with only its paths and sizes swapped for tiny ones."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    timeline = tmp_path / "lighthouse.json"
    timeline.write_text(json.dumps({"prompts": [{"text": "a lighthouse at dusk", "startTime": 0, "endTime": 1}]}))
    swaps = {'weights_dir="weights"': f"weights_dir={str(tiny)!r}", "width=832, height=480": "width=32, height=32",
             '"timelines/lighthouse.json"': repr(str(timeline)), "seconds=20": "seconds=1"}
    for old, new in swaps.items():
        assert old in code, f"the README's example no longer says {old}"
        code = code.replace(old, new)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 — our own README's example
    summary = scope["summary"]
    assert summary.complete and Path(summary.output).name == "lighthouse.mp4" and Path(summary.output).exists()
    assert scope["pipe"]._vae_kind == "lighttae"
