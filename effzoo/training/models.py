"""The model a training command starts from: a checkpoint as given, or a source converted on the fly."""

from __future__ import annotations

from pathlib import Path


def convert_for_training(model: str, convert_to: str | None, max_length: int, output: Path, *,
                         reuse: bool = False, progress: bool = True) -> str:
    """``model`` itself, or ``model`` converted to ``convert_to`` in ``output/converted``.

    The positions grow to ``max_length`` when it is longer than the source's (tiling, the
    Longformer recipe). ``reuse`` keeps an earlier conversion (when resuming a run). Under
    ``accelerate launch`` one process per machine converts while the others wait, then reuse it.
    """
    if convert_to is None:
        return model
    import torch
    from accelerate import PartialState

    from ..checkpoints.location import resolve_source
    from ..conversion import convert
    from ..conversion.sources import position_count

    source_positions = position_count(resolve_source(model))
    target = output / "converted"
    state = PartialState(cpu=not torch.cuda.is_available())  # the same device choice as the Trainer's
    with state.local_main_process_first():
        if state.is_local_main_process and not (reuse and target.is_dir()):
            convert(model, convert_to, target, overwrite=True, progress=progress,
                    max_position_embeddings=max_length if max_length > source_positions else None)
    return str(target)
