"""Child process of ``test_remote_code.py``: load saved checkpoints where effzoo cannot be imported.

Run as ``python -I -S load_without_effzoo.py WORK REPO SITE_DIR...``: ``-I`` ignores PYTHON*
variables, the user site and the current directory, ``-S`` skips site-packages and their
``.pth`` files (the editable install's import hook for effzoo lives in one), and only the
SITE_DIRs (site-packages without an ``effzoo`` package) are put on the path. Each
``WORK/<AutoClass>/`` checkpoint is loaded with ``trust_remote_code=True`` and run on the inputs
stored in ``WORK/<AutoClass>.safetensors``, whose other tensors are the outputs the test process
got: they must be identical. Then one model is saved again, first without effzoo and then with
``REPO`` on the path: the copy is never registered, so both times it saves as any remote-code
model does (Transformers copies the code it was loaded from), and each save must load again.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def check_outputs(model, data: dict) -> None:
    """Same outputs as effzoo's own class, to round-off: CPU kernels may differ in the last bit
    (about 1e-9) between two copies of the same weights, depending on memory alignment."""
    import torch

    outputs = model(data.pop("input_ids"), attention_mask=data.pop("attention_mask"))
    for name, expected in data.items():
        assert torch.allclose(outputs[name], expected, rtol=1e-6, atol=1e-6), (
            f"{type(model).__name__}.{name} differs from the in-process output"
        )


def main(work: Path, repo: str) -> None:
    assert importlib.util.find_spec("effzoo") is None, f"effzoo is importable from {sys.path}: the test proves nothing"
    import transformers
    from safetensors.torch import load_file
    from transformers.dynamic_module_utils import check_imports

    models = {}
    for checkpoint in sorted(path for path in work.iterdir() if path.is_dir()):
        for code_file in checkpoint.glob("*.py"):
            check_imports(code_file)  # what loading from the Hub checks, file by file
        auto_class = getattr(transformers, checkpoint.name)
        model = auto_class.from_pretrained(checkpoint, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        check_outputs(model, load_file(work / f"{checkpoint.name}.safetensors"))
        models[checkpoint.name] = model

    auto_name, model = next(iter(models.items()))
    data = load_file(work / f"{auto_name}.safetensors")
    for effzoo_installed in (False, True):
        if effzoo_installed:
            sys.path.insert(0, repo)
        resaved = work.parent / f"resaved-{effzoo_installed}"
        model.save_pretrained(resaved)
        assert "auto_map" in (resaved / "config.json").read_text()
        reloaded = getattr(transformers, auto_name).from_pretrained(resaved, trust_remote_code=True).eval()
        check_outputs(reloaded, dict(data))
    print(f"loaded without effzoo: {', '.join(models)}")


if __name__ == "__main__":
    sys.path.extend(sys.argv[3:])
    main(Path(sys.argv[1]), sys.argv[2])
