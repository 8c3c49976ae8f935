"""Test helpers for the node pack: a tiny stand-in for ComfyUI's modules, the pack loader, and a workflow checker.

The stand-in implements only what our nodes call (`comfy_api.latest` io/ui, `folder_paths`, `comfy.utils`,
`comfy.model_management`, `comfy.model_patcher`, `comfy.cli_args`) with the same names and call shapes, so node
logic is tested without ComfyUI; `test_comfy_host.py` runs the same nodes in a real ComfyUI.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
OUR_NODES = ("LoadRSVLModels", "Stage1FidelitySR", "LlavaRSCaption", "ControlNetRefine", "DynamicStepScheduler",
             "RSVLUncertainty", "RSVLLoadScene", "RSVLSaveGeoTIFF", "RSVLUpscaleScene")


# ---------------------------------------------------------------------------------------------------------------
# comfy_api.latest stand-in


class _Input:
    io_type = "*"

    def __init__(self, id: str, optional: bool = False, tooltip: str | None = None, **options: Any) -> None:
        self.id, self.optional, self.tooltip, self.options = id, optional, tooltip, options

    def as_info(self):
        info = {k: v for k, v in self.options.items() if v is not None and k not in ("options", "display_name")}
        if self.tooltip:
            info["tooltip"] = self.tooltip
        if self.io_type == "COMBO":
            return [list(self.options["options"]), info]
        return [self.io_type, info]


class _Output:
    io_type = "*"

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 **_: Any) -> None:
        self.id, self.display_name, self.tooltip = id, display_name, tooltip


def _comfytype(io_type: str):
    input_cls = type(f"{io_type}Input", (_Input,), {"io_type": io_type})
    output_cls = type(f"{io_type}Output", (_Output,), {"io_type": io_type})
    return type(io_type, (), {"io_type": io_type, "Input": input_cls, "Output": output_cls})


class Schema:
    def __init__(self, node_id: str, display_name: str | None = None, category: str = "sd", inputs=(), outputs=(),
                 description: str = "", is_output_node: bool = False, **_: Any) -> None:
        self.node_id, self.display_name, self.category = node_id, display_name, category
        self.inputs, self.outputs, self.description = list(inputs), list(outputs), description
        self.is_output_node = is_output_node


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, **_: Any) -> None:
        self.args, self.ui = args, ui

    @property
    def result(self):
        return self.args


class ComfyNode:
    pass


class ComfyExtension:
    async def get_node_list(self):  # pragma: no cover - overridden
        return []


class PreviewText:
    def __init__(self, value: str, **_: Any) -> None:
        self.value = value

    def as_dict(self):
        return {"text": (self.value,)}


def node_info(cls) -> dict:
    """An /object_info entry (the parts the workflow checker reads) from a node class's schema."""
    schema = cls.define_schema()
    required = {i.id: i.as_info() for i in schema.inputs if not i.optional}
    optional = {i.id: i.as_info() for i in schema.inputs if i.optional}
    return {
        "input": {"required": required, "optional": optional},
        "input_order": {"required": list(required), "optional": list(optional)},
        "output": [o.io_type for o in schema.outputs],
        "output_name": [o.display_name or o.io_type for o in schema.outputs],
        "name": schema.node_id, "display_name": schema.display_name, "category": schema.category,
        "description": schema.description, "output_node": schema.is_output_node,
    }


# Built-in nodes the shipped workflows use, as ComfyUI's /object_info lists them (widget parts only).
BUILTIN_INFO = {
    "LoadImage": {"input": {"required": {"image": [[], {"image_upload": True}]}, "optional": {}},
                  "input_order": {"required": ["image"]}, "output": ["IMAGE", "MASK"]},
    "SaveImage": {"input": {"required": {"images": ["IMAGE", {}],
                                         "filename_prefix": ["STRING", {"default": "ComfyUI"}]}, "optional": {}},
                  "input_order": {"required": ["images", "filename_prefix"]}, "output": []},
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [[], {}]}, "optional": {}},
                               "input_order": {"required": ["ckpt_name"]}, "output": ["MODEL", "CLIP", "VAE"],
                               "output_name": ["MODEL", "CLIP", "VAE"]},
    "UpscaleModelLoader": {"input": {"required": {"model_name": ["COMBO", {"options": []}]}, "optional": {}},
                           "input_order": {"required": ["model_name"]}, "output": ["UPSCALE_MODEL"],
                           "output_name": ["UPSCALE_MODEL"]},
    # ComfyUI >= 0.20 only (core SUPIR): listed as 0.20.1's /object_info lists it
    "ModelPatchLoader": {"input": {"required": {"name": [[], {}]}, "optional": {}},
                         "input_order": {"required": ["name"]}, "output": ["MODEL_PATCH"],
                         "output_name": ["MODEL_PATCH"]},
    "PreviewAny": {"input": {"required": {"source": ["*", {}]}, "optional": {}},
                   "input_order": {"required": ["source"]}, "output": []},
    "PrimitiveStringMultiline": {"input": {"required": {"value": ["STRING", {"multiline": True}]}, "optional": {}},
                                 "input_order": {"required": ["value"]}, "output": ["STRING"]},
    "RepeatImageBatch": {"input": {"required": {"image": ["IMAGE", {}],
                                                "amount": ["INT", {"default": 1, "min": 1, "max": 4096}]},
                                   "optional": {}},
                         "input_order": {"required": ["image", "amount"]}, "output": ["IMAGE"]},
}


# ---------------------------------------------------------------------------------------------------------------
# comfy.* and folder_paths stand-ins


class Interrupted(Exception):
    """comfy.model_management.InterruptProcessingException stand-in."""


def _fake_modules(models_dir: Path) -> dict[str, types.ModuleType]:
    state = types.SimpleNamespace(interrupt_after=None, updates=[], loads=[], patchers=[])

    io = types.ModuleType("comfy_api.latest.io")
    for name, io_type in (("Int", "INT"), ("Float", "FLOAT"), ("String", "STRING"), ("Combo", "COMBO"),
                          ("Image", "IMAGE"), ("Boolean", "BOOLEAN"), ("UpscaleModel", "UPSCALE_MODEL"),
                          ("Model", "MODEL"), ("Clip", "CLIP"), ("Vae", "VAE"), ("Conditioning", "CONDITIONING"),
                          ("Mask", "MASK")):
        setattr(io, name, _comfytype(io_type))
    io.Custom = _comfytype
    io.Hidden = types.SimpleNamespace(unique_id="UNIQUE_ID", prompt="PROMPT", extra_pnginfo="EXTRA_PNGINFO")
    io.Schema, io.NodeOutput, io.ComfyNode = Schema, NodeOutput, ComfyNode
    ui = types.ModuleType("comfy_api.latest.ui")
    ui.PreviewText = PreviewText
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ui, latest.ComfyExtension = io, ui, ComfyExtension
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.latest = latest

    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = Interrupted
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    state.free_ram = 64 * 1024 ** 3  # what get_free_memory(cpu) answers; tests lower it
    mm.get_free_memory = lambda dev=None, torch_free_too=False: state.free_ram

    def throw_exception_if_processing_interrupted():
        if state.interrupt_after is not None and len(state.updates) >= state.interrupt_after:
            raise Interrupted()

    def load_models_gpu(models, memory_required=0, force_full_load=False, **_):
        for patcher in models:
            patcher.model.to(patcher.load_device)
            state.loads.append((patcher, memory_required, force_full_load))

    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.load_models_gpu = load_models_gpu

    patcher_mod = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device
            if not hasattr(model, "device"):
                model.device = offload_device
            state.patchers.append(self)

    patcher_mod.ModelPatcher = ModelPatcher

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current = total, 0

        def update_absolute(self, value, total=None, preview=None):
            self.total = total or self.total
            self.current = value
            state.updates.append((value, self.total, preview))
            throw_exception_if_processing_interrupted()  # what ComfyUI's hook does

    utils.ProgressBar = ProgressBar
    cli_args = types.ModuleType("comfy.cli_args")
    cli_args.args = types.SimpleNamespace(preview_size=512, preview_method="auto")  # ComfyUI: an enum
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.model_patcher, comfy.utils, comfy.cli_args = mm, patcher_mod, utils, cli_args

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.folder_names_and_paths = {"checkpoints": ([str(models_dir / "checkpoints")], {".safetensors", ".ckpt"}),
                                 "upscale_models": ([str(models_dir / "upscale_models")],
                                                    {".pt", ".pth", ".bin", ".safetensors", ".ckpt"})}

    def add_model_folder_path(name, path, is_default=False):
        if name in fp.folder_names_and_paths:
            paths = fp.folder_names_and_paths[name][0]
            if path not in paths:
                paths.insert(0, path) if is_default else paths.append(path)
        else:
            fp.folder_names_and_paths[name] = ([path], set())

    def get_filename_list(name):
        paths, extensions = fp.folder_names_and_paths[name]
        found = set()
        for root in paths:
            for folder, _, files in os.walk(root):
                for file in files:
                    if not extensions or os.path.splitext(file)[1].lower() in extensions:
                        found.add(os.path.relpath(os.path.join(folder, file), root))
        return sorted(found)

    def get_full_path(name, filename):
        for root in fp.folder_names_and_paths[name][0]:
            if os.path.isfile(os.path.join(root, filename)):
                return os.path.join(root, filename)
        return None

    fp.add_model_folder_path = add_model_folder_path
    fp.get_input_directory = lambda: str(models_dir.parent / "input")
    fp.get_output_directory = lambda: str(models_dir.parent / "output")
    fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths[name][0])
    fp.get_filename_list = get_filename_list
    fp.get_full_path = get_full_path
    fp.state = state
    return {"comfy_api": comfy_api, "comfy_api.latest": latest, "comfy": comfy, "comfy.model_management": mm,
            "comfy.model_patcher": patcher_mod, "comfy.utils": utils, "comfy.cli_args": cli_args, "folder_paths": fp}


def load_pack(name: str = "rsvl_pack_under_test"):
    """Import the repository as ComfyUI does: by the path of its __init__.py, as a package."""
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class FakeComfy:
    """Installs the stand-in modules, imports the pack's nodes, and removes both again on `close()`."""

    def __init__(self, models_dir: Path, pack_name: str = "rsvl_pack_under_test") -> None:
        self.modules = _fake_modules(models_dir)
        self.saved = {k: sys.modules.get(k) for k in self.modules}
        sys.modules.update(self.modules)
        self.pack_name = pack_name
        self.pack = load_pack(pack_name)
        self.nodes = importlib.import_module(f"{pack_name}.nodes.pack")
        self.host = importlib.import_module(f"{pack_name}.nodes.host")
        self.schema = importlib.import_module(f"{pack_name}.nodes.schema")
        hosted = {name: importlib.import_module(f"{pack_name}.rsvl_core.hosted.{name}")
                  for name in ("folders", "handles", "sdxl", "settings", "samples")}
        self.folders, self.handles, self.sdxl, self.settings = (hosted[n] for n in ("folders", "handles", "sdxl",
                                                                                      "settings"))
        self.stage_runs = importlib.import_module(f"{pack_name}.rsvl_core.pipeline.stage_runs")
        # what the nodes' engine side offers, by name (read-only: patch a module above to change one)
        self.logic = types.SimpleNamespace(**{name: value for module in [*hosted.values(), self.host]
                                              for name, value in vars(module).items() if not name.startswith("_")})
        self.logic.LatentPreview = importlib.import_module(f"{pack_name}.rsvl_core.refine.preview").LatentPreview
        self.state = self.modules["folder_paths"].state
        self.folder_paths = self.modules["folder_paths"]

    def node(self, node_id: str):
        return next(c for c in self.nodes.NODE_CLASSES if c.define_schema().node_id == node_id)

    def object_info(self) -> dict:
        info = {cls.define_schema().node_id: node_info(cls) for cls in self.nodes.NODE_CLASSES}
        return {**BUILTIN_INFO, **info}

    def close(self) -> None:
        for key, module in self.saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = module
        for key in [k for k in sys.modules if k == self.pack_name or k.startswith(self.pack_name + ".")]:
            del sys.modules[key]


def place_demo_models(models_dir: Path) -> dict[str, str]:
    """The tiny demo models laid out in a ComfyUI models folder; returns the loader's choices for them."""
    import shutil

    from rsvl_core.demo import write_demo_models

    scratch = models_dir / "_demo"
    written = write_demo_models(scratch)
    moves = {
        written["sr3"]: models_dir / "rsvl" / "sr3" / written["sr3"].name,
        written["captioner"]: models_dir / "rsvl" / "llava" / "rsvl_demo_llava",
        written["caption adapter"]: models_dir / "rsvl" / "llava_adapter" / "rsvl_demo_adapter",
        written["SDXL"]: models_dir / "checkpoints" / written["SDXL"].name,
        written["SUPIR"]: models_dir / "rsvl" / "supir" / written["SUPIR"].name,
    }
    for source, target in moves.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
    shutil.rmtree(scratch)
    return {"sr3_model": written["sr3"].name, "llava_model": "rsvl_demo_llava", "llava_adapter": "rsvl_demo_adapter",
            "sdxl_checkpoint": written["SDXL"].name, "supir_model": written["SUPIR"].name}


# ---------------------------------------------------------------------------------------------------------------
# workflows: UI format <-> API format, checked against node definitions

CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


def normalize(spec: list) -> tuple[Any, dict]:
    """An input spec as (kind, options); a combo's kind is its list of choices (V1 or V3 ["COMBO", {options}])."""
    options = spec[1] if len(spec) > 1 else {}
    if spec[0] == "COMBO":
        return list(options.get("options", [])), options
    return spec[0], options


def widget_names(info: dict) -> list[tuple[str, dict, Any]]:
    """(name, options, type) of the widget inputs of a node, in widgets_values order (not counting extras)."""
    out = []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, info["input"].get(section, {}).keys()):
            kind, options = normalize(info["input"][section][name])
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                out.append((name, options, kind))
    return out


# Nodes that live in the frontend only (notes): saved in UI workflows, never queued.
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """What the ComfyUI frontend queues for a UI-format workflow (widgets_values -> inputs, links -> [id, slot])."""
    links = {link[0]: link for link in workflow["links"]}
    api = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        info = object_info[node["type"]]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values", []))
        for name, options, _ in widget_names(info):
            if not values:
                break
            inputs[name] = values.pop(0)
            if options.get("control_after_generate") and values and values[0] in CONTROL_VALUES:
                values.pop(0)
            if options.get("image_upload") and values and values[0] == "image":
                values.pop(0)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def check_api_workflow(api: dict, object_info: dict) -> list[str]:
    """Problems of an API-format workflow against node definitions (empty = fine)."""
    problems = []
    for node_id, node in api.items():
        kind = node.get("class_type")
        if kind not in object_info:
            problems.append(f"{node_id}: unknown node type {kind!r}")
            continue
        info = object_info[kind]
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name in node["inputs"]:
            if name not in declared:
                problems.append(f"{node_id} {kind}: unknown input {name!r}")
        for name, spec in declared.items():
            required = name in info["input"].get("required", {})
            value = node["inputs"].get(name)
            if value is None:
                if required:
                    problems.append(f"{node_id} {kind}: required input {name!r} neither linked nor set")
                continue
            kind_of, options = normalize(spec)
            if isinstance(value, list):  # a link
                source = api.get(value[0])
                if source is None:
                    problems.append(f"{node_id} {kind}: {name!r} links to missing node {value[0]}")
                    continue
                outputs = object_info[source["class_type"]]["output"]
                if value[1] >= len(outputs):
                    problems.append(f"{node_id} {kind}: {name!r} links to missing output {value}")
                    continue
                produced = outputs[value[1]]
                expected = "COMBO" if isinstance(kind_of, list) else kind_of
                if produced != expected and "*" not in (produced, expected):
                    problems.append(f"{node_id} {kind}: {name!r} wants {expected}, gets {produced}")
                continue
            if isinstance(kind_of, list):
                if kind_of and value not in kind_of:
                    problems.append(f"{node_id} {kind}: {name!r} = {value!r} is not one of {kind_of}")
            elif kind_of == "INT":
                if not isinstance(value, int) or isinstance(value, bool):
                    problems.append(f"{node_id} {kind}: {name!r} must be an integer, got {value!r}")
                elif not options.get("min", value) <= value <= options.get("max", value):
                    problems.append(f"{node_id} {kind}: {name!r} = {value} outside [{options.get('min')}, "
                                    f"{options.get('max')}]")
            elif kind_of == "FLOAT":
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    problems.append(f"{node_id} {kind}: {name!r} must be a number, got {value!r}")
                elif not options.get("min", value) <= value <= options.get("max", value):
                    problems.append(f"{node_id} {kind}: {name!r} = {value} outside range")
            elif kind_of == "STRING":
                if not isinstance(value, str):
                    problems.append(f"{node_id} {kind}: {name!r} must be a string")
            elif kind_of == "BOOLEAN":
                if not isinstance(value, bool):
                    problems.append(f"{node_id} {kind}: {name!r} must be true/false")
            else:
                problems.append(f"{node_id} {kind}: {name!r} is a {kind_of} socket and must be linked")
    return problems
