"""Saved checkpoints carry their own code: ``trust_remote_code=True`` loads them without effzoo."""

import ast
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

import effzoo
from effzoo.remote_code import REMOTE_CODE_MODULE, exported_modules, flat_name
from effzoo.variants import VARIANTS
from tests.conftest import TINY
from tests.modeling.test_heads import head_batch

REPO = Path(effzoo.__file__).resolve().parents[1]


def tiny_model(variant, auto_name):
    return variant.model_classes[auto_name](variant.config_class(**TINY)).eval()


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_export_is_the_import_closure_and_loads_from_its_folder(variant, tmp_path):
    tiny_model(variant, "AutoModel").save_pretrained(tmp_path)
    entry = tmp_path / f"{REMOTE_CODE_MODULE}.py"
    roots = {variant.config_class.__module__, variant.modeling.__name__}
    expected = {f"{flat_name(module)}.py" for module in exported_modules(roots)}
    assert {"effzoo.modeling.backbone", "effzoo.attention.base", "effzoo.configs.base"} <= set(exported_modules(roots))
    assert {path.name for path in tmp_path.glob("*.py")} == expected | {entry.name}
    # Transformers' loader reaches every file from the entry module, through same-folder imports only…
    assert {Path(path).name for path in get_relative_import_files(entry)} == expected
    for path in tmp_path.glob("*.py"):
        assert "from .." not in path.read_text()
        # …and needs no effzoo: the only effzoo imports left are the guarded ones of save_pretrained.
        assert "effzoo" not in get_imports(path)


def test_installed_effzoo_keeps_loading_its_own_classes(tmp_path):
    model = tiny_model(VARIANTS["full"], "AutoModelForMaskedLM")
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(reloaded) is effzoo.FullForMaskedLM


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_head_loads_without_effzoo_with_identical_outputs(variant, tmp_path):
    work = tmp_path / "checkpoints"
    for auto_name in variant.model_classes:
        tiny_model(variant, auto_name).save_pretrained(work / auto_name)
        # The reference is effzoo's own class loaded from the same files: the in-memory model can
        # differ in the last bit, as its weights lie elsewhere in memory.
        model = getattr(transformers, auto_name).from_pretrained(work / auto_name).eval()
        input_ids, mask = (tensor.contiguous() for tensor in head_batch(auto_name))
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        with torch.no_grad():
            outputs = model(**inputs)
        tensors = {name: value for name, value in outputs.items() if isinstance(value, torch.Tensor)}
        save_file({**tensors, **inputs}, work / f"{auto_name}.safetensors")

    # Site-packages without an effzoo package; the editable install's hook is in a .pth that -S skips.
    site_dirs = [path for path in site.getsitepackages() if not (Path(path) / "effzoo").exists()]
    if not site_dirs:
        pytest.skip("effzoo is installed inside site-packages; this test needs the editable install")
    child = Path(__file__).with_name("load_without_effzoo.py")
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(child), str(work), str(REPO), *site_dirs],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded without effzoo" in result.stdout


def test_export_refuses_an_import_of_a_module_object():
    """``from . import chunking`` cannot be followed by Transformers' loader: the export says so."""
    from effzoo.remote_code import _refuse_submodule_import

    statement = ast.parse("from . import chunking").body[0]
    with pytest.raises(ValueError, match=r"from \.chunking import <names>"):
        _refuse_submodule_import("effzoo.attention.ops.chunked_flash", statement, "effzoo.attention.ops")
    _refuse_submodule_import("effzoo.attention.ops.chunked_flash",
                             ast.parse("from .chunking import chunk_plan").body[0], "effzoo.attention.ops.chunking")
