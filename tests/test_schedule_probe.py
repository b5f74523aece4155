"""--overlap auto: the schedule is chosen by measuring both on the render's steady chunks (a fake clock here;
the render with the probe in its loop is in test_decode_stage.py)."""

import pytest

from memflow_cli.engine.decode_stage import ScheduleProbe, overlap_mode


class FakeClock:
    """Time moves only when a chunk 'runs': `cost(phase)` seconds per chunk of the probe's current phase."""

    def __init__(self, overlapped: float, serial: float):
        self.now, self.costs, self.probe = 0.0, {"overlapped": overlapped, "serial": serial}, None

    def __call__(self) -> float:
        return self.now

    def run(self, probe: ScheduleProbe, index: int, changed: bool = False) -> bool:
        """One chunk through the loop's calls; returns whether it ran serial."""
        probe.begin(index, changed)
        serial = probe.serial(index)
        phase = "serial" if serial else "overlapped"
        self.now += self.costs[phase]
        probe.end(index)
        return serial


def drive(overlapped, serial, chunks=16, changed=(), warmup=7, window=3):
    clock, drains = FakeClock(overlapped, serial), []
    probe = ScheduleProbe(lambda: drains.append(1), warmup=warmup, window=window, clock=clock)
    schedule = [clock.run(probe, i, i in changed) for i in range(chunks)]
    return probe, schedule, len(drains)


@pytest.mark.parametrize("overlapped, serial, chosen", [(0.5, 0.7, "overlap"), (0.7, 0.5, "serial")])
def test_the_faster_schedule_is_kept(overlapped, serial, chosen):
    probe, schedule, drains = drive(overlapped, serial)
    # warm-up (7 chunks) and the overlapped window (3) run overlapped, then the serial window (3), then the choice
    assert schedule[:10] == [False] * 10 and schedule[10:13] == [True] * 3
    assert schedule[13:] == [chosen == "serial"] * 3
    assert probe.choice == chosen and probe.seconds == pytest.approx({"overlapped": overlapped, "serial": serial})
    assert drains == 4  # a drained stage at each window's start and end
    report = probe.report()
    assert report["chosen"] == chosen and report["measured"] and report["serial_s_per_chunk"] == serial


def test_a_prompt_switch_restarts_the_window():
    # chunk 8 re-caches (its window restarts there): the overlapped window is chunks 8-10, serial 11-13
    probe, schedule, _ = drive(0.5, 0.7, changed=(8,))
    assert schedule[:11] == [False] * 11 and schedule[11:14] == [True] * 3 and probe.choice == "overlap"


def test_a_short_render_keeps_overlapping():
    probe, schedule, _ = drive(0.7, 0.5, chunks=12)  # ends inside the serial window
    assert not probe.decided and probe.report() == {"overlap": "auto", "chosen": "overlap", "measured": False,
                                                    "overlapped_s_per_chunk": 0.7}


def test_overlap_modes():
    assert [overlap_mode(v) for v in (True, False, None, "AUTO", "on", "off")] == ["on", "off", "auto", "auto", "on", "off"]
    with pytest.raises(ValueError):
        overlap_mode("sometimes")


def test_overlap_option_and_its_alias():
    from memflow_cli.cli.app import parse_overlap_option
    from memflow_cli.errors import InputError

    assert parse_overlap_option(None, False) == "auto" and parse_overlap_option(None, True) == "off"
    assert parse_overlap_option("On", False) == "on" and parse_overlap_option("off", True) == "off"
    with pytest.raises(InputError, match="--no-overlap contradicts --overlap on"):
        parse_overlap_option("on", True)
    with pytest.raises(InputError, match="--overlap: expected one of auto, on, off, got 'sometimes'"):
        parse_overlap_option("sometimes", False)
