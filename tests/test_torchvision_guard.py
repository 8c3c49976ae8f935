"""A CUDA-built torchvision beside a CPU-only torch: importable after `import rsvl_core`, ops fail clearly."""

from __future__ import annotations

import subprocess
import sys

import torch

from rsvl_core.kit import torchvision_guard


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def test_torchvision_and_spandrel_import_after_rsvl_core_in_a_fresh_process():
    done = run_python("import rsvl_core, torchvision, spandrel, torch\n"
                      "from rsvl_core.kit.torchvision_guard import TorchvisionImportGuard\n"
                      "import sys\n"
                      "assert not any(isinstance(f, TorchvisionImportGuard) for f in sys.meta_path)\n"
                      "print('versions', torch.__version__, torchvision.__version__)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("versions ")


def test_unloadable_ops_get_declared_schemas_and_calls_fail_with_torchvisions_message():
    code = (
        "import torch\n"
        "from rsvl_core import torchvision_guard as g\n"
        "torch.version.cuda = None\n"
        "def refuse(path): raise OSError('libtorch_cuda.so: cannot open shared object file')\n"
        "torch.ops.load_library = refuse\n"
        "assert g.torchvision_ops_library() is not None, 'torchvision is not installed'\n"
        "assert g.prepare_torchvision() is True\n"
        "print(torch.ops.torchvision.nms.default._schema)\n"
        "import torchvision\n"
        "try:\n"
        "    torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)\n"
        "except RuntimeError as e:\n"
        "    print('refused:', str(e)[:40])\n")
    done = run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torchvision::nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor" in done.stdout
    assert "refused: Couldn't load custom C++ ops" in done.stdout


def test_a_gpu_torch_is_left_alone(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torchvision_guard, "torchvision_ops_library",
                        lambda: (_ for _ in ()).throw(AssertionError("must not look for the ops library")))
    assert torchvision_guard.prepare_torchvision() is False


def test_install_is_idempotent_and_skipped_once_torchvision_is_imported(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path
                                           if not isinstance(f, torchvision_guard.TorchvisionImportGuard)])
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    torchvision_guard.install()
    torchvision_guard.install()
    assert sum(isinstance(f, torchvision_guard.TorchvisionImportGuard) for f in sys.meta_path) == 1
    torchvision_guard.uninstall()
    monkeypatch.setitem(sys.modules, "torchvision", object())
    torchvision_guard.install()
    assert not any(isinstance(f, torchvision_guard.TorchvisionImportGuard) for f in sys.meta_path)
