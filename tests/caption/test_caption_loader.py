"""Loading a captioner folder offline: clear one-line errors naming the missing file; dtype and backend options."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from rsvl_testing import REPO, tiny_llava_next_folder, tiny_seed_adapter

from rsvl_core.caption import load_captioner, load_vlm
from rsvl_core.cli import main
from rsvl_core.kit.errors import CheckpointError, RsvlError


@pytest.fixture
def llava_dir(tmp_path):
    return tiny_llava_next_folder(tmp_path)


@pytest.mark.parametrize("remove, named", [
    ("config.json", "config.json: file not found"),
    ("model.safetensors", "model.safetensors: model weights not found"),
    ("tokenizer.json", "tokenizer.json: tokenizer not found"),
    ("processor_config.json", "preprocessor_config.json: image processor config not found"),
])
def test_missing_file_is_named(llava_dir, remove, named):
    (llava_dir / remove).unlink()
    with pytest.raises(CheckpointError) as info:
        load_vlm(llava_dir)
    message = str(info.value)
    assert named in message and str(llava_dir) in message and "\n" not in message


def test_weights_missing_a_tensor_are_refused(llava_dir):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(llava_dir / "model.safetensors"))
    (head,) = [k for k in tensors if k.endswith("lm_head.weight")]  # saved in the checkpoint (4.x) layout
    del tensors[head]
    save_file(tensors, str(llava_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing keys in the weights: lm_head\.weight"):
        load_vlm(llava_dir)


def test_no_network_and_no_folder(tmp_path):
    with pytest.raises(CheckpointError, match="model folder not found"):
        load_vlm(tmp_path / "llava-hf/llama3-llava-next-8b-hf")  # never taken for a hub repo id


def test_bf16_loads_in_bf16(llava_dir):
    model, _ = load_vlm(llava_dir, dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_8bit_without_bitsandbytes_says_what_to_install(llava_dir):
    with pytest.raises(RsvlError, match="bitsandbytes"):
        load_vlm(llava_dir, quantization="8bit")


def test_flash_attention_needs_cuda(llava_dir):
    with pytest.raises(RsvlError, match="flash_attention_2 needs a CUDA device"):
        load_vlm(llava_dir, attention="flash_attention_2")
    with pytest.raises(ValueError, match="merge"):
        load_captioner(llava_dir, quantization="4bit", merge_adapter=True)


def test_cli_caption_prints_and_writes(tmp_path, capsys):
    from PIL import Image

    models = tmp_path / "models"
    tiny_llava_next_folder(models)
    tiny_seed_adapter(models / "llava_adapter")
    Image.fromarray((torch.rand(20, 28, 3) * 255).byte().numpy()).save(tmp_path / "a.png")
    sample = REPO / "rsvl_core" / "samples" / "osbs_029_lr100.png"
    argv = ["caption", str(tmp_path / "a.png"), str(sample), "--models-dir", str(models), "--device", "cpu",
            "--max-new-tokens", "6", "--seed", "3", "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[0] for line in printed] == ["a.png", "osbs_029_lr100.png"]
    assert all(len(line.split(": ", 1)[1].split()) >= 1 for line in printed)
    assert main([*argv, "--output", str(tmp_path / "captions.txt")]) == 0
    assert (tmp_path / "captions.txt").read_text().splitlines() == printed

    assert main(["caption", str(sample), "--models-dir", str(tmp_path / "none"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "captioner weights not found" in err and "llava" in err
