"""The seed's LoRA adapter (original LLaVA-NeXT names) lands on every transformers module it names."""

from __future__ import annotations

import copy

import pytest
import torch
from rsvl_testing import hand_mapped_name, llava_logits, tiny_llava_inputs, tiny_llava_next_folder, tiny_seed_adapter
from safetensors.torch import load_file, save_file

from rsvl_core.caption import apply_adapter, load_vlm, map_module_name, read_adapter
from rsvl_core.caption.tiny import TinyLlavaSpec
from rsvl_core.kit.errors import CheckpointError

RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return tiny_llava_next_folder(tmp_path_factory.mktemp("caption"))


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return tiny_seed_adapter(tmp_path_factory.mktemp("adapter") / "llava_adapter", rank=RANK, alpha=ALPHA)


@pytest.fixture(scope="module")
def base(llava_dir):
    return load_vlm(llava_dir)


def hand_reference(model, adapter_dir):
    """A copy of `model` with W += (alpha / r) * B @ A applied by hand to every module the adapter names."""
    reference = copy.deepcopy(model)
    modules = dict(reference.named_modules())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    with torch.no_grad():
        for key, a in tensors.items():
            if not key.endswith(".lora_A.weight"):
                continue
            original = key[len("base_model.model."):-len(".lora_A.weight")]
            b = tensors[key.replace("lora_A", "lora_B")]
            modules[hand_mapped_name(original)].weight += ALPHA / RANK * (b @ a)
    return reference, len(tensors)


def test_every_adapter_tensor_applied_and_matches_hand_reference(base, adapter_dir):
    model, processor = base
    inputs = tiny_llava_inputs(processor)
    reference, tensor_count = hand_reference(model, adapter_dir)
    adapted, report = apply_adapter(copy.deepcopy(model), adapter_dir)

    assert tensor_count == 50 and report.tensors_applied == 50
    spec = TinyLlavaSpec()
    assert len(report.lora_modules) == spec.layers * (7 + 4) + 3  # text + vision layers, projector x2, lm_head
    assert "model.multi_modal_projector.linear_2" in report.lora_modules
    assert "model.vision_tower.encoder.layers.1.mlp.fc2" in report.lora_modules

    base_logits = llava_logits(model, inputs)
    ours = llava_logits(adapted, inputs)
    hand = llava_logits(reference, inputs)
    assert (ours - base_logits).abs().max() > 0.1  # the adapter changes the output
    assert (ours - hand).abs().max() < 1e-3  # measured ~1e-4 on logits of magnitude ~10

    # Each LoRA module on its own: y = x (W + s B A)^T + b, so no single tensor can be silently dropped.
    live = dict(adapted.named_modules())
    ref_modules = dict(reference.named_modules())
    x = torch.randn(3, 64)
    for name in report.lora_modules:
        ref = ref_modules[name]
        xi = x[:, : ref.in_features]
        with torch.no_grad():
            delta = (live[name](xi) - ref(xi)).abs().max()
            moved = (ref.weight - dict(model.named_modules())[name].weight).abs().max()
        assert delta < 1e-5, name
        assert moved > 1e-3, name


def test_merge_gives_the_unmerged_output(base, adapter_dir):
    model, processor = base
    inputs = tiny_llava_inputs(processor, seed=3)
    unmerged, _ = apply_adapter(copy.deepcopy(model), adapter_dir)
    merged, report = apply_adapter(copy.deepcopy(model), adapter_dir, merge=True)
    assert report.merged
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert type(merged.lm_head) is torch.nn.Linear
    diff = (llava_logits(merged, inputs) - llava_logits(unmerged, inputs)).abs().max()
    assert diff < 1e-3


def test_modules_to_save_replace_the_base_weights(base, tmp_path):
    model, _ = base
    embed = torch.randn_like(model.model.language_model.embed_tokens.weight)
    proj = torch.randn_like(model.model.multi_modal_projector.linear_1.bias)
    folder = tiny_seed_adapter(tmp_path / "a", modules_to_save={"model.embed_tokens": embed,
                                                                "model.mm_projector.0.bias": proj})
    adapted, report = apply_adapter(copy.deepcopy(model), folder)
    assert torch.equal(adapted.model.language_model.embed_tokens.weight, embed)
    assert torch.equal(adapted.model.multi_modal_projector.linear_1.base_layer.bias, proj)
    assert report.replaced_parameters == ["model.language_model.embed_tokens.weight",
                                          "model.multi_modal_projector.linear_1.bias"]
    assert report.tensors_applied == 52


def test_non_lora_trainables_beside_the_adapter_are_applied(base, adapter_dir, tmp_path):
    # LLaVA's own LoRA training saves the trained projector in non_lora_trainables.bin, not in the adapter file
    import shutil

    folder = tmp_path / "a"
    shutil.copytree(adapter_dir, folder)
    model, _ = base
    weight = torch.randn_like(model.model.multi_modal_projector.linear_2.weight)
    bias = torch.randn_like(model.model.multi_modal_projector.linear_2.bias)
    torch.save({"base_model.model.model.mm_projector.2.weight": weight,
                "base_model.model.model.mm_projector.2.bias": bias}, folder / "non_lora_trainables.bin")
    adapted, report = apply_adapter(copy.deepcopy(model), folder)
    assert torch.equal(adapted.model.multi_modal_projector.linear_2.base_layer.weight, weight)
    assert torch.equal(adapted.model.multi_modal_projector.linear_2.base_layer.bias, bias)
    assert "model.multi_modal_projector.linear_2.weight" in report.replaced_parameters
    assert report.tensors_applied == 52


def test_modules_to_save_without_weights_fails_naming_it(base, adapter_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "a"
    shutil.copytree(adapter_dir, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["modules_to_save"] = ["embed_tokens"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"modules_to_save lists 'embed_tokens'") as info:
        apply_adapter(copy.deepcopy(base[0]), folder)
    assert "adapter_model.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_garbage_adapter_keys_fail_naming_them(base, adapter_dir, tmp_path):
    import shutil

    folder = tmp_path / "a"
    shutil.copytree(adapter_dir, folder)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    tensors["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = torch.zeros(RANK, 32)
    tensors["base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight"] = torch.zeros(32, RANK)
    tensors["base_model.model.model.not_a_module.weight"] = torch.zeros(3)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        apply_adapter(copy.deepcopy(base[0]), folder)
    message = str(info.value)
    assert "3 adapter tensor(s) match no module" in message
    assert "model.layers.7.self_attn.q_proj.lora_A.weight" in message and "model.not_a_module.weight" in message
    assert "adapter_model.safetensors" in message and "\n" not in message


def test_lora_shapes_from_another_model_are_refused(base, tmp_path):
    folder = tiny_seed_adapter(tmp_path / "a", spec=TinyLlavaSpec(hidden_size=48, intermediate_size=96),
                               vision=False, projector=False, lm_head=False)
    pattern = r"LoRA shapes A\(4, \d+\) B\(\d+, 4\) do not fit model\.language_model\.layers\.0\."
    with pytest.raises(CheckpointError, match=pattern):
        apply_adapter(copy.deepcopy(base[0]), folder)


def test_bin_adapter_is_read_with_weights_only(base, adapter_dir, tmp_path):
    import shutil

    folder = tmp_path / "a"
    shutil.copytree(adapter_dir, folder)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    (folder / "adapter_model.safetensors").unlink()
    torch.save(tensors, folder / "adapter_model.bin")
    adapter = read_adapter(folder)
    assert adapter.weights_path.name == "adapter_model.bin" and adapter.tensor_count == 50
    torch.save({"weights": tensors, "hook": copy.deepcopy}, folder / "adapter_model.bin")  # a pickled function
    with pytest.raises(CheckpointError, match="never executes pickled code"):
        read_adapter(folder)


def test_missing_adapter_files_are_named(tmp_path, adapter_dir):
    import shutil

    with pytest.raises(CheckpointError, match=r"adapter_config\.json: file not found"):
        read_adapter(tmp_path)
    folder = tmp_path / "a"
    shutil.copytree(adapter_dir, folder)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors: adapter weights not found"):
        read_adapter(folder)


@pytest.mark.parametrize("original, expected", [
    ("model.layers.1.self_attn.q_proj", "model.language_model.layers.1.self_attn.q_proj"),
    ("model.embed_tokens", "model.language_model.embed_tokens"),
    ("model.mm_projector.0", "model.multi_modal_projector.linear_1"),
    ("model.mm_projector.2", "model.multi_modal_projector.linear_2"),
    ("model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1",
     "model.vision_tower.encoder.layers.0.mlp.fc1"),
    ("lm_head", "lm_head"),
    ("language_model.model.layers.1.mlp.up_proj", "model.language_model.layers.1.mlp.up_proj"),  # transformers 4.x
    ("language_model.lm_head", "lm_head"),
    ("multi_modal_projector.linear_2", "model.multi_modal_projector.linear_2"),
    ("model.language_model.layers.0.mlp.down_proj", "model.language_model.layers.0.mlp.down_proj"),  # already 5.x
    ("model.layers.9.self_attn.q_proj", None),
    ("model.mm_projector.1", None),
])
def test_original_names_map_onto_live_modules(base, original, expected):
    modules = dict(base[0].named_modules())
    assert map_module_name(original, modules) == expected
