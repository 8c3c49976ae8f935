"""Perceptual metrics with weights the user supplies as local files (nothing is downloaded at run time).

- `lpips`: LPIPS (Zhang et al. 2018) with the AlexNet backbone, torchmetrics' implementation: its linear
  layers ship inside torchmetrics; the backbone is torchvision's ImageNet AlexNet, which the user provides
  (`alexnet-owt-7be5be79.pth`, or any file with its `features.*` tensors). Lower is closer to HR.
- `dists`: DISTS (Ding et al. 2020), torchmetrics' implementation: its alpha/beta ship inside torchmetrics;
  the backbone is torchvision's ImageNet VGG16 (`vgg16-397923af.pth`). Lower is closer to HR.
- `clip_iqa`: CLIP-IQA (Wang et al. 2023) as torchmetrics defines it for Hugging Face CLIP models (the "Good
  photo." / "Bad photo." pair, logit scale 100, softmax), computed here over a local CLIP folder (e.g. a copy
  of `openai/clip-vit-base-patch16`): torchmetrics' own helpers break on transformers 5 (its feature calls
  return an output object) and hand [0, 1] images to a processor that divides by 255 again; we pass
  `do_rescale=False`. No HR needed, higher is better. The paper's CLIP-IQA figures may come from
  another variant (IQA-PyTorch's `clipiqa`, a ResNet-50 CLIP with learned prompts), so numbers are
  comparable between methods of one run, not necessarily with the paper's.
Files are found by flag (`--lpips-weights`, `--dists-weights`, `--clip-model`) or in `<models-dir>/eval/`;
a metric whose file is absent is skipped with one line naming the file to provide. Pickled files are read
with `torch.load(weights_only=True)` (rsvl_core.weights.checkpoint), never executed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..kit.errors import RsvlError
from ..weights.checkpoint import WEIGHT_SUFFIXES, read_state_dict

PERCEPTUAL_METRICS = ("lpips", "dists", "clip_iqa")
CLIP_IQA_PROMPTS = ("Good photo.", "Bad photo.")  # CLIP-IQA's "quality" pair
EVAL_SUBDIR = "eval"
LPIPS_FILE, DISTS_FILE, CLIP_DIR = "alexnet-owt-7be5be79.pth", "vgg16-397923af.pth", "clip"


@dataclass(frozen=True)
class PerceptualWeights:
    """Where each perceptual metric's weights are (None = absent: the metric is skipped)."""

    lpips: Path | None = None   # torchvision AlexNet state dict
    dists: Path | None = None   # torchvision VGG16 state dict
    clip: Path | None = None    # a Hugging Face CLIP model folder


def _first_match(folder: Path, stem: str) -> Path | None:
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(stem)
                   and p.suffix.lower() in WEIGHT_SUFFIXES)
    return found[0] if found else None


def find_perceptual_weights(models_dir: Path | None, lpips: Path | None = None, dists: Path | None = None,
                            clip: Path | None = None) -> PerceptualWeights:
    """The flags' files, else `<models-dir>/eval/alexnet*`, `vgg16*` and `clip/`; a flag naming a missing
    file is an error (a typo must not silently skip a metric)."""
    for flag, given in (("--lpips-weights", lpips), ("--dists-weights", dists), ("--clip-model", clip)):
        if given is not None and not Path(given).exists():
            raise RsvlError(f"{flag} {given}: no such file or folder")
    folder = Path(models_dir) / EVAL_SUBDIR if models_dir is not None else None
    if folder is not None:
        lpips = lpips or _first_match(folder, "alexnet")
        dists = dists or _first_match(folder, "vgg16")
        clip = clip or ((folder / CLIP_DIR) if (folder / CLIP_DIR / "config.json").is_file() else None)
    return PerceptualWeights(lpips, dists, clip)


def skip_lines(weights: PerceptualWeights, models_dir: Path | None) -> list[str]:
    """One line per metric that will be skipped, naming the file to provide."""
    where = f"{Path(models_dir) / EVAL_SUBDIR}" if models_dir is not None else "<models-dir>/eval"
    lines = []
    if weights.lpips is None:
        lines.append(f"lpips skipped: provide torchvision's ImageNet AlexNet weights ({LPIPS_FILE}) as "
                     f"--lpips-weights FILE or {where}/{LPIPS_FILE}")
    if weights.dists is None:
        lines.append(f"dists skipped: provide torchvision's ImageNet VGG16 weights ({DISTS_FILE}) as "
                     f"--dists-weights FILE or {where}/{DISTS_FILE}")
    if weights.clip is None:
        lines.append(f"clip_iqa skipped: provide a Hugging Face CLIP model folder (e.g. openai/clip-vit-base-patch16)"
                     f" as --clip-model DIR or {where}/{CLIP_DIR}/")
    return lines


def _backbone_features(path: Path, expected: str) -> dict[str, torch.Tensor]:
    """`features.<i>.weight/bias` of a torchvision classifier file, keyed by `<i>.weight`."""
    state = read_state_dict(path, expected)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise RsvlError(f"{path}: no 'features.*' tensors; expected {expected}")
    return features


def _load_slices(slices: list[torch.nn.Sequential], features: dict[str, torch.Tensor], path: Path,
                 expected: str) -> None:
    """Put a torchvision `features` state dict into the numbered slices torchmetrics splits it into."""
    def learned(block: torch.nn.Module) -> dict[str, torch.Tensor]:  # conv weights, not DISTS' fixed L2-pool filters
        return {n: t for n, t in block.state_dict().items() if n.endswith((".weight", ".bias"))}

    wanted = {name for block in slices for name in learned(block)}
    missing = sorted(wanted - set(features))
    if missing:
        raise RsvlError(f"{path}: missing {', '.join('features.' + m for m in missing[:4])}; expected {expected}")
    for block in slices:
        own = learned(block)
        for name, tensor in own.items():
            if tuple(features[name].shape) != tuple(tensor.shape):
                raise RsvlError(f"{path}: features.{name} has shape {tuple(features[name].shape)}, expected "
                                f"{tuple(tensor.shape)} ({expected})")
        block.load_state_dict({name: features[name] for name in own}, strict=False)


def build_lpips(path: Path) -> torch.nn.Module:
    """torchmetrics' LPIPS-AlexNet: shipped linear layers, the user's AlexNet backbone (no download)."""
    from torchmetrics.functional.image.lpips import _LPIPS

    network = _LPIPS(pretrained=True, net="alex", pnet_rand=True)  # random backbone: no download
    slices = [getattr(network.net, f"slice{i}") for i in range(1, 6)]
    _load_slices(slices, _backbone_features(path, "torchvision's AlexNet (alexnet-owt-7be5be79.pth)"), path,
                 "torchvision's AlexNet")
    return network.eval()


def build_dists(path: Path) -> torch.nn.Module:
    """torchmetrics' DISTS network: shipped alpha/beta, the user's VGG16 backbone (no download)."""
    from unittest import mock

    import torchvision
    from torchmetrics.functional.image import dists as dists_module

    # torchmetrics builds VGG16 with ImageNet weights (a download); build it empty, then load the user's file
    with mock.patch.object(dists_module, "vgg16", lambda weights=None: torchvision.models.vgg16(weights=None)):
        network = dists_module.DISTSNetwork()
    slices = [getattr(network, f"stage{i}") for i in range(1, 6)]
    features = _backbone_features(path, "torchvision's VGG16 (vgg16-397923af.pth)")
    _load_slices(slices, features, path, "torchvision's VGG16")
    return network.eval()


class PerceptualScorer:
    """The perceptual metrics whose weights were found; `skipped` says what to provide for the others."""

    def __init__(self, weights: PerceptualWeights, models_dir: Path | None = None,
                 device: torch.device | None = None) -> None:
        self.weights, self.device = weights, device or torch.device("cpu")
        self.skipped = skip_lines(weights, models_dir)
        self._lpips = self._dists = None
        self._clip: tuple | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The metrics that will be computed."""
        found = (self.weights.lpips, self.weights.dists, self.weights.clip)
        return tuple(name for name, path in zip(PERCEPTUAL_METRICS, found, strict=True) if path is not None)

    def _model(self, name: str, build: Callable[[Path], torch.nn.Module], path: Path) -> torch.nn.Module:
        if getattr(self, f"_{name}") is None:
            setattr(self, f"_{name}", build(path).to(self.device))
        return getattr(self, f"_{name}")

    @torch.no_grad()
    def score(self, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
        """Each available metric of SR (1, 3, H, W) in [0, 1] against HR (CLIP-IQA looks at SR alone)."""
        out: dict[str, float] = {}
        sr_d, hr_d = sr.float().to(self.device), hr.float().to(self.device)
        if self.weights.lpips is not None:
            lpips = self._model("lpips", build_lpips, self.weights.lpips)
            out["lpips"] = lpips(sr_d, hr_d, normalize=True).mean().item()
        if self.weights.dists is not None:
            dists = self._model("dists", build_dists, self.weights.dists)
            out["dists"] = dists(sr_d, hr_d).mean().item()
        if self.weights.clip is not None:
            out["clip_iqa"] = self._clip_iqa(sr_d)
        return out

    def _clip_iqa(self, image: torch.Tensor) -> float:
        """P("Good photo." | image) against "Bad photo.": cosine similarities of CLIP's projected features,
        times CLIP's logit scale of 100, softmax over the pair (the CLIP-IQA definition torchmetrics uses)."""
        if self._clip is None:
            self._clip = self._load_clip()
        model, processor, anchors = self._clip
        pixels = processor(images=[i.cpu() for i in image.clamp(0, 1)], return_tensors="pt", do_rescale=False)
        features = _projected(model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device)))
        features = features / features.norm(p=2, dim=-1, keepdim=True)
        probs = (100 * features @ anchors.t()).softmax(-1)
        return float(probs[0, 0])

    def _load_clip(self) -> tuple:
        from transformers import CLIPModel, CLIPProcessor

        path = str(self.weights.clip)
        try:
            model = CLIPModel.from_pretrained(path, local_files_only=True).eval().to(self.device)
            processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RsvlError(f"--clip-model {path}: not a loadable CLIP model folder "
                            f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None
        text = processor(text=list(CLIP_IQA_PROMPTS), return_tensors="pt", padding=True)
        anchors = _projected(model.get_text_features(input_ids=text["input_ids"].to(self.device),
                                                     attention_mask=text["attention_mask"].to(self.device)))
        return model, processor, anchors / anchors.norm(p=2, dim=-1, keepdim=True)


def _projected(output) -> torch.Tensor:
    """CLIP's projected features: transformers 4 returns them as a tensor, 5 as the output's pooler_output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
