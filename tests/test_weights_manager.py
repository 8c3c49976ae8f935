"""`rsvl weights`: the search order, the checks, and downloads through a fake huggingface_hub (no network)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shutil
import sys
import types
from pathlib import Path

import pytest

from rsvl_core.cli.weights import add_weights_parser, run_weights
from rsvl_core.demo import write_demo_models
from rsvl_core.kit.errors import RsvlError
from rsvl_core.pipeline import load_problems
from rsvl_core.weights.catalogue import WEIGHTS, KnownFile, find_weights, search_roots
from rsvl_core.weights.manager import (
    check_weights,
    download_weights,
    header_problem,
    list_weights,
    sha256_file,
)

JUGGERNAUT = "juggernautXL_v8Rundiffusion.safetensors"
ALL = ("sr3", "captioner", "caption-adapter", "sdxl", "supir")


@pytest.fixture(scope="module")
def demo_written(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("demo") / "models"
    return folder, write_demo_models(folder)


@pytest.fixture(scope="module")
def demo_models(demo_written) -> Path:
    return demo_written[0]


def rsvl_weights(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="rsvl")
    add_weights_parser(parser.add_subparsers(dest="command", required=True))
    return run_weights(parser.parse_args(["weights", *argv]))


def copy_models(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_models_dir_search_finds_the_files_the_demo_wrote(demo_written, clean):
    demo_models, written = demo_written
    rows = {row.id: row for row in list_weights(models_dir=demo_models)}
    assert all(rows[s].status == "found" and rows[s].result.label == "--models-dir" for s in ALL)
    assert rows["sr3"].path == written["sr3"] == demo_models / "sr3" / "rsvl_demo_sr3_gen.pth"
    assert rows["captioner"].path == written["captioner"] == demo_models / "llava"
    assert rows["caption-adapter"].path == written["caption adapter"] == demo_models / "llava_adapter"
    assert (rows["sdxl"].path, rows["supir"].path) == (written["SDXL"], written["SUPIR"])
    assert all(row.fix is None for row in rows.values())


def test_search_order_explicit_models_env_cwd(demo_models, clean, monkeypatch, tmp_path):
    env_models = copy_models(demo_models, tmp_path / "env_models")
    monkeypatch.setenv("RSVL_MODELS_DIR", str(env_models))
    labels = [root.label for root in search_roots(models_dir=tmp_path / "empty")]
    assert labels[:3] == ["--models-dir", "$RSVL_MODELS_DIR", "./models"]
    result = find_weights("supir", models_dir=tmp_path / "empty")
    assert result.found and result.label == "$RSVL_MODELS_DIR" and env_models in result.path.parents
    assert [look.label for look in result.looked] == ["--models-dir", "$RSVL_MODELS_DIR"]
    assert result.looked[0].outcome == "no such folder"
    # ./models is next
    monkeypatch.delenv("RSVL_MODELS_DIR")
    copy_models(demo_models, clean / "models")
    assert find_weights("sr3").label == "./models"
    # an explicit path wins and never falls back
    explicit = find_weights("sr3", explicit=tmp_path / "nope.pth")
    assert explicit.status == "invalid" and "--sr3" in explicit.message


def test_comfyui_layout_is_found(demo_models, clean, monkeypatch, tmp_path):
    comfy = tmp_path / "ComfyUI"
    rsvl = comfy / "models" / "rsvl"
    for sub in ("sr3", "llava", "llava_adapter"):
        shutil.copytree(demo_models / sub, rsvl / sub)
    checkpoints = comfy / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(demo_models / "sdxl" / "rsvl_demo_sdxl.safetensors", checkpoints / JUGGERNAUT)
    shutil.copy(demo_models / "supir" / "rsvl_demo_supir.safetensors", checkpoints / "SUPIR-v0Q.safetensors")
    (checkpoints / "sd_xl_base_1.0.safetensors").write_bytes(b"other model")  # not ours: ignored by name
    monkeypatch.setenv("COMFYUI_DIR", str(comfy))
    rows = {row.id: row for row in list_weights()}
    assert all(rows[s].status == "found" and rows[s].result.label.startswith("ComfyUI") for s in ALL)
    assert rows["sr3"].path.parent == rsvl / "sr3"
    assert rows["sdxl"].path == checkpoints / JUGGERNAUT
    assert rows["supir"].path == checkpoints / "SUPIR-v0Q.safetensors"
    # --comfyui-dir is looked at before $COMFYUI_DIR
    labels = [look.label for look in find_weights("sr3", comfyui_dir=tmp_path / "other").looked]
    assert list(dict.fromkeys(labels))[:3] == ["./models", "ComfyUI (--comfyui-dir)", "ComfyUI ($COMFYUI_DIR)"]


def test_seed_ckpt_pth_layout_is_found(demo_models, clean, tmp_path, capsys):
    release = tmp_path / "release"
    ckpt = release / "CKPT_PTH"
    shutil.copytree(demo_models / "llava_adapter", ckpt / "Llava-next")
    (ckpt / "sr3" / "weights").mkdir(parents=True)
    shutil.copy(demo_models / "sr3" / "rsvl_demo_sr3_gen.pth", ckpt / "sr3" / "weights" / "I640000_E37_gen.pth")
    shutil.copy(demo_models / "supir" / "rsvl_demo_supir.safetensors", ckpt / "v0Q.ckpt")
    shutil.copy(demo_models / "supir" / "rsvl_demo_supir.safetensors", ckpt / "v0F.ckpt")
    shutil.copy(demo_models / "sdxl" / "rsvl_demo_sdxl.safetensors", ckpt / "juggernautXL_v8Rundiffusion.safetensors")
    rows = {row.id: row for row in list_weights(ckpt_dir=release)}  # the folder holding CKPT_PTH also works
    assert rows["caption-adapter"].path == ckpt / "Llava-next"
    assert rows["sr3"].path == ckpt / "sr3" / "weights" / "I640000_E37_gen.pth"
    assert rows["supir"].path == ckpt / "v0Q.ckpt" and "v0F.ckpt" in rows["supir"].result.notes[0]
    assert rows["sdxl"].path == ckpt / "juggernautXL_v8Rundiffusion.safetensors"
    assert rows["captioner"].status == "missing"  # the release has no base captioner
    # ./CKPT_PTH is looked in without being named
    shutil.copytree(ckpt, clean / "CKPT_PTH")
    assert find_weights("sr3").label == "seed CKPT_PTH"
    assert rsvl_weights("list", "--ckpt-pth", str(ckpt)) == 0
    out = capsys.readouterr().out
    assert "rsvl weights download captioner --models-dir models" in out
    # how `rsvl upscale` / `rsvl caption` get to a file found through a search flag: the same flag
    assert f"find it when given the same --ckpt-pth {ckpt}" in out


def test_missing_items_print_the_exact_fix(clean, tmp_path, capsys):
    assert rsvl_weights("list", "--models-dir", str(tmp_path / "m")) == 0
    out = capsys.readouterr().out
    for stage in ("captioner", "sdxl", "supir"):
        assert f"fix: rsvl weights download {stage} --models-dir {tmp_path / 'm'}" in out
    assert "drive.google.com/file/d/1OJ2wi75Ivdwtp8TjncQGpXjDqdwxVpL3" in out and "sr3/" in out
    assert str(tmp_path / "m" / "sr3") in out  # where it was looked for
    assert rsvl_weights("check", "--models-dir", str(tmp_path / "m")) == 1


def test_ambiguous_and_invalid_places_are_reported(demo_models, clean, tmp_path):
    models = copy_models(demo_models, tmp_path / "models")
    shutil.copy(models / "sr3" / "rsvl_demo_sr3_gen.pth", models / "sr3" / "second_gen.pth")
    (models / "llava_adapter" / "adapter_config.json").unlink()
    rows = {row.id: row for row in list_weights(models_dir=models)}
    assert rows["sr3"].status == "ambiguous" and "--sr3 PATH" in rows["sr3"].fix
    assert rows["caption-adapter"].status == "invalid" and "adapter_config.json" in rows["caption-adapter"].fix


def test_check_passes_on_sound_files_and_hashes_match_hashlib(demo_models, clean, capsys):
    calls = []
    results = {r.id: r for r in check_weights(models_dir=demo_models, sha256=True, load_check=load_problems,
                                                 progress=lambda *a, **k: calls.append(a))}
    assert all(results[s].ok for s in ALL), {s: (r.problems, [f.problem for f in r.files]) for s, r in results.items()}
    sdxl = results["sdxl"].files[0]
    assert sdxl.sha256 == hashlib.sha256(sdxl.path.read_bytes()).hexdigest()
    assert "no published hash" in sdxl.notes[0]
    assert calls and calls[-1][0] == calls[-1][1]  # the progress callback reached the total
    path = demo_models / "sr3" / "rsvl_demo_sr3_gen.pth"
    assert sha256_file(path, chunk_size=1000) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rsvl_weights("check", "--models-dir", str(demo_models), "--sha256", "-q") == 0
    assert "no published hash to compare with" in capsys.readouterr().out


def test_check_detects_corrupt_files(demo_models, clean, tmp_path, capsys):
    models = copy_models(demo_models, tmp_path / "models")
    sdxl = models / "sdxl" / "rsvl_demo_sdxl.safetensors"
    sdxl.write_bytes(sdxl.read_bytes()[:-100])  # a truncated download
    sr3 = models / "sr3" / "rsvl_demo_sr3_gen.pth"
    sr3.write_bytes(sr3.read_bytes()[: sr3.stat().st_size // 2])  # the zip's directory is at the end
    (models / "llava" / "config.json").write_text("{not json")
    results = {r.id: r for r in check_weights(models_dir=models)}
    assert "truncated" in results["sdxl"].files[0].problem
    assert "not a PyTorch checkpoint" in results["sr3"].files[0].problem
    assert any("config.json is not valid JSON" in p for p in results["captioner"].problems)
    assert results["supir"].ok and results["caption-adapter"].ok
    assert header_problem(_write(tmp_path / "empty.ckpt", b"")) == "file is empty"
    assert rsvl_weights("check", "--models-dir", str(models)) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and f"fix: rsvl weights download sdxl --models-dir {models} --force" in out


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_published_hash_mismatch_is_a_problem_for_strict_entries(clean, tmp_path):
    supir = tmp_path / "models" / "supir"
    supir.mkdir(parents=True)
    import torch

    torch.save({"x": torch.zeros(2)}, supir / "SUPIR-v0Q.ckpt")
    result = check_weights(models_dir=tmp_path / "models", sha256=True)[-1]
    assert not result.ok and "published SUPIR-v0Q.ckpt has 5329810432" in result.files[0].problem
    assert WEIGHTS["supir"].known[0].sha256 == "d7f418398bb024d0d3c779c4ee4e9f171eb072306093f5bcfb2bf096aa2738f8"


class FakeHub:
    """Stands in for huggingface_hub: writes what the Hub would, and records what was asked."""

    def __init__(self, payload: bytes = b"weights", fail: Exception | None = None) -> None:
        self.payload, self.fail, self.calls = payload, fail, []

    def module(self) -> types.ModuleType:
        module = types.ModuleType("huggingface_hub")
        module.hf_hub_download = self.hf_hub_download
        module.snapshot_download = self.snapshot_download
        return module

    def hf_hub_download(self, repo_id, filename, local_dir, token=None):
        self.calls.append(("file", repo_id, filename, Path(local_dir)))
        if self.fail:
            raise self.fail
        target = Path(local_dir) / filename
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        self.seen_final = [p.name for p in target.parents[2].iterdir() if not p.name.startswith(".")]
        target.write_bytes(self.payload)
        return str(target)

    def snapshot_download(self, repo_id, local_dir, token=None, allow_patterns=None):
        self.calls.append(("snapshot", repo_id, allow_patterns, Path(local_dir)))
        if self.fail:
            raise self.fail
        folder = Path(local_dir)
        (folder / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text('{"model_type": "llava_next"}')
        (folder / "model.safetensors").write_bytes(self.payload)
        return str(folder)


def test_download_file_lands_atomically_in_the_models_folder(clean, tmp_path, monkeypatch, capsys):
    fake = FakeHub(b"sdxl bytes")
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake.module())
    models = tmp_path / "models"
    assert rsvl_weights("download", "sdxl", "--models-dir", str(models)) == 0
    kind, repo, filename, staging = fake.calls[0]
    assert (kind, repo, filename) == ("file", "RunDiffusion/Juggernaut-XL-v8", JUGGERNAUT)
    assert fake.seen_final == []  # nothing at the destination while downloading: written in a hidden folder
    assert staging.parent.parent == models / "sdxl" and staging.parent.name.startswith(".")
    final = models / "sdxl" / "juggernautXL_v8Rundiffusion.safetensors"
    assert final.read_bytes() == b"sdxl bytes"
    assert sorted(p.name for p in (models / "sdxl").iterdir()) == [final.name]  # no temp folder left
    assert "downloaded RunDiffusion/Juggernaut-XL-v8" in capsys.readouterr().err
    # already there: not downloaded again
    assert download_weights("sdxl", models, hub=fake.module()).status == "present" and len(fake.calls) == 1
    # SUPIR: the variant picks the file, and a published size + sha256 is verified before the rename
    digest = hashlib.sha256(b"sdxl bytes").hexdigest()
    known = KnownFile("SUPIR-v0F.ckpt", len(b"sdxl bytes"), digest, "test")
    monkeypatch.setitem(WEIGHTS, "supir", dataclasses.replace(WEIGHTS["supir"], known=(known,)))
    result = download_weights("supir", models, variant="v0F", hub=fake.module())
    assert result.path == models / "supir" / "SUPIR-v0F.ckpt" and fake.calls[-1][2] == "SUPIR-v0F.ckpt"
    assert result.path.read_bytes() == b"sdxl bytes"


def test_download_verifies_published_size(clean, tmp_path):
    fake = FakeHub(b"too short for SUPIR")
    with pytest.raises(RsvlError, match="published file 5329810432"):
        download_weights("supir", tmp_path / "models", hub=fake.module())
    assert not (tmp_path / "models" / "supir" / "SUPIR-v0Q.ckpt").exists()


def test_download_snapshot_for_the_captioner(clean, tmp_path):
    fake = FakeHub()
    result = download_weights("captioner", tmp_path / "models", hub=fake.module())
    assert fake.calls[0][:2] == ("snapshot", "llava-hf/llama3-llava-next-8b-hf") and "*.safetensors" in fake.calls[0][2]
    assert result.path == tmp_path / "models" / "llava" and (result.path / "config.json").is_file()
    assert not (result.path / ".cache").exists() and not (tmp_path / "models" / ".rsvl-download").exists()
    assert find_weights("captioner", models_dir=tmp_path / "models").found


def test_download_network_error_is_one_line(clean, tmp_path, monkeypatch, capsys):
    fake = FakeHub(fail=ConnectionError("Max retries exceeded with url: /camenduru/SUPIR\nmore detail"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake.module())
    assert rsvl_weights("download", "supir", "--models-dir", str(tmp_path / "models")) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ConnectionError: Max retries exceeded" in err
    assert "huggingface.co/camenduru/SUPIR" in err
    assert not list((tmp_path / "models" / "supir").glob("*.ckpt"))


def test_missing_huggingface_hub_gives_the_pip_command(clean, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    assert rsvl_weights("download", "sdxl", "--models-dir", str(tmp_path / "models")) == 1
    assert 'pip install "huggingface_hub>=0.23"' in capsys.readouterr().err


def test_seed_only_stages_print_the_manual_steps(clean, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub().module())
    assert rsvl_weights("download", "sr3", "--models-dir", str(tmp_path / "m")) == 1
    err = capsys.readouterr().err
    assert "cannot be downloaded automatically" in err and "pretrained_model.zip" in err
    assert f"{tmp_path / 'm' / 'sr3'}/" in err
    assert rsvl_weights("download", "all", "--models-dir", str(tmp_path / "m")) == 1  # SUPIR's size check fails
    err = capsys.readouterr().err
    assert "captioner: downloaded" in err and "sdxl: downloaded" in err
    assert "sr3: by hand" in err and "caption-adapter (optional): by hand" in err
