"""One job loop (`pipeline.work.run_local`): `rsvl caption` and `rsvl eval` are planned as work items and run by the
loop of `rsvl upscale` (claim, skip, resume, events); `--max-vram` is on every command that loads models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rsvl_core.cli import build_parser, main
from rsvl_core.jobs.inputs import JobEvents
from rsvl_core.jobs.work import caption_job
from rsvl_core.pipeline import PipelineModels, StageSpec
from rsvl_core.pipeline.components import CaptionOptions


@pytest.mark.parametrize("command", ["upscale", "batch", "eval", "caption"])
def test_engine_max_vram_is_on_every_command_that_loads_models(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-vram MAX_VRAM GPU memory budget, e.g. 12G" in text  # the one SETTINGS entry's help


class Recorder:
    """A captioner that names the image by its mean level; `stop_after` raises KeyboardInterrupt (a Ctrl-C)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls, self.stop_after = 0, stop_after

    def modules(self):
        return {}

    def caption(self, image, options, callback=None):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return [f"level  {round(float(image.mean()) * 255)}"]


class Seen(JobEvents):
    def __init__(self) -> None:
        self.skipped_sources, self.finished_sources = [], []

    def skipped(self, source, target):
        self.skipped_sources.append(source.name)

    def finished(self, source, target, record, seconds):
        self.finished_sources.append(source.name)


def images(folder, levels=(10, 20, 30)):
    folder.mkdir()
    for n, level in enumerate(levels):
        Image.fromarray(np.full((8, 8, 3), level, dtype=np.uint8)).save(folder / f"{n}.png")
    return sorted(folder.glob("*.png"))


def test_engine_caption_resumes_through_the_work_item_loop(tmp_path):
    """Interrupted after one caption, the output file and its record hold that caption; the rerun captions only
    the rest, and a third run reads everything back; other settings caption again."""
    sources = images(tmp_path / "in")
    out = tmp_path / "captions.txt"
    expected = "".join(f"{s.name}: level {level}\n" for s, level in zip(sources, (10, 20, 30), strict=True))
    first = Recorder(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        caption_job(sources, CaptionOptions(), models_of(first), output=out)
    assert out.read_text() == expected.splitlines(keepends=True)[0]
    assert len(json.loads(out.with_name("captions.txt.json").read_text())["captions"]) == 1
    assert not list(tmp_path.glob(".*claim"))  # the interrupted job left no claim behind
    second, events = Recorder(), Seen()
    summary = caption_job(sources, CaptionOptions(), models_of(second), events=events, output=out)
    assert second.calls == 2 and events.skipped_sources == ["0.png"] and events.finished_sources == ["1.png", "2.png"]
    assert out.read_text() == expected and [c for _, c in summary.captions] == ["level 10", "level 20", "level 30"]
    third = Recorder()
    summary = caption_job(sources, CaptionOptions(), models_of(third), output=out)
    assert third.calls == 0 and len(summary.skipped) == 3 and out.read_text() == expected
    other = Recorder()
    caption_job(sources, CaptionOptions(max_new_tokens=5), models_of(other), output=out)
    assert other.calls == 3  # other settings: another job
    again = Recorder()
    caption_job(sources, CaptionOptions(max_new_tokens=5), models_of(again), output=out, overwrite=True)
    assert again.calls == 3 and out.read_text() == expected


def test_engine_caption_without_a_file_keeps_nothing(tmp_path):
    sources = images(tmp_path / "in", (40,))
    for _ in range(2):
        recorder = Recorder()
        summary = caption_job(sources, CaptionOptions(), models_of(recorder))
        assert recorder.calls == 1 and summary.captions == [(sources[0], "level 40")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def models_of(captioner) -> PipelineModels:
    return PipelineModels("cpu", "resident", captioner=StageSpec("caption", lambda device: captioner))


def test_engine_caption_cli_rerun_skips_what_is_done(tmp_path, monkeypatch):
    """`rsvl caption -o FILE` twice: the second run loads the captioner but captions nothing again."""
    from rsvl_testing import tiny_llava_next_folder

    sources = images(tmp_path / "in", (10, 200))
    out = tmp_path / "c.txt"
    args = ["caption", *map(str, sources), "--llava", str(tiny_llava_next_folder(tmp_path)), "--no-adapter",
            "--max-new-tokens", "3", "--greedy", "--device", "cpu", "-o", str(out), "-q"]
    assert main(args) == 0
    first = out.read_text()
    assert len(first.splitlines()) == 2
    from rsvl_core.caption import Captioner

    def refuse(*_, **__):
        raise AssertionError("captioned again")

    monkeypatch.setattr(Captioner, "caption", refuse)
    assert main(args) == 0 and out.read_text() == first


def test_engine_eval_resumes_through_the_work_item_loop(tmp_path, monkeypatch, capsys):
    """`rsvl eval` interrupted after two pairs: those pairs' records stay (no claim left behind); the rerun
    computes only the rest, and the results equal an uninterrupted run's."""
    from rsvl_core.evaluation import runner

    hr = tmp_path / "hr"
    hr.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(hr / f"{name}.png")
    args = ["eval", str(hr), "--scale", "2", "--methods", "bicubic,lanczos", "--models-dir", str(tmp_path), "-q"]
    assert main([*args, "-o", str(tmp_path / "whole")]) == 0
    real, calls = runner.upsample_baseline, []

    def interrupted(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(runner, "upsample_baseline", interrupted)
    out = tmp_path / "resumed"
    assert main([*args, "-o", str(out)]) == 130  # the command line's Ctrl-C exit
    assert len(list((out / "pairs").rglob("*.json"))) == 2 and not list(out.rglob(".*.claim"))
    monkeypatch.setattr(runner, "upsample_baseline", real)
    capsys.readouterr()
    assert main([*args, "-o", str(out)]) == 0
    assert "2 image x method pair(s) computed, 2 read back from an earlier run" in capsys.readouterr().err
    assert (out / "per_image.csv").read_text() == (tmp_path / "whole" / "per_image.csv").read_text()
