"""``effzoo convert``: any BERT or RoBERTa checkpoint -> any effzoo variant.

The weights carry over unchanged (the Performer paper's backward compatibility); only the
mechanism's own parameters are new. Positions can be extended by tiling. The output folder is
written next to its final place and moved there only when complete, so a failed conversion
leaves nothing half-written and never touches the source.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..checkpoints.licence import source_license
from ..checkpoints.location import resolve_source
from ..checkpoints.provenance import record_provenance
from ..configs.base import BERT_FIELDS, config_fields
from ..output_folders import check_output_dir
from ..variants import Variant, get_variant
from .calibration import calibrate, calibration_texts, needs_calibration, sample_batch, unknown_share
from .families import FAMILIES, SourceFamily
from .reformer import reformer_fields, reformer_notes, reformer_weights
from .sources import read_source_config, read_weights
from .state_dict import POSITION_KEY, canonical_state_dict, resize_positions, upcycle_feed_forward, with_backbone_prefix

#: Source architecture suffix (after "Bert"/"Roberta") -> the effzoo Auto class that receives it.
HEAD_OF_ARCHITECTURE = {
    "Model": "AutoModel",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForPreTraining": "AutoModelForMaskedLM",
    "ForCausalLM": "AutoModelForCausalLM",
    "LMHeadModel": "AutoModelForCausalLM",
    "ModelWithLMHead": "AutoModelForCausalLM",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForMultipleChoice": "AutoModelForMultipleChoice",
}


_RANDOM_INIT = "random, normal(0, initializer_range) as in BERT (train before use)"

#: How the backbone options' new parameters start (a key containing the pattern).
_OPTION_INIT = {
    ".router.": "random, normal(0, initializer_range): a new router over experts that are copies (sparse upcycling)",
    "encoder.LayerNorm.": "ones and zeros: the LayerNorm of the merged reversible streams",
    "halting.": "zero weights and a bias with which every layer runs: the plain classifier until trained (PonderNet)",
}

_REVERSIBLE_NOTE = (
    "reversible=True: not function-preserving. The layers become two-stream and pre-LN "
    "(Y1 = X1 + Attention(X2), Y2 = X2 + FeedForward(Y1)), which no BERT computes; both streams start as the "
    "embedding output, as in the Reformer code, and the BERT weights are only a starting point: train the model "
    "(effzoo pretrain) before use."
)


@dataclass
class ConversionReport:
    """What a conversion did; ``str(report)`` is the text ``effzoo convert`` prints."""

    source: str
    source_model_type: str
    source_architecture: str
    variant: str
    model_class: str
    output: str
    parameters_carried: int = 0
    tensors_carried: int = 0
    new_parameters: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    source_positions: int = 0
    positions: int = 0
    tokenizer: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    calibration: str = ""
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"source      {self.source} ({self.source_model_type}, {self.source_architecture})",
            f"variant     {self.variant} -> {self.model_class}",
            f"carried     {self.tensors_carried} tensors, {self.parameters_carried:,} parameters",
            f"new         {len(self.new_parameters)} tensors"
            + "".join(f"\n              {name}: {how}" for name, how in self.new_parameters.items()),
            f"dropped     {len(self.dropped)} source tensors"
            + "".join(f"\n              {name}" for name in self.dropped),
        ]
        if self.positions != self.source_positions:
            how = "tiled from the learned ones" if self.positions > self.source_positions else "truncated"
            lines.append(f"positions   {self.source_positions} -> {self.positions} ({how})")
        else:
            lines.append(f"positions   {self.positions}")
        if self.overrides:
            lines.append("overrides   " + ", ".join(f"{key}={value!r}" for key, value in self.overrides.items()))
        if self.calibration:
            lines.append(f"calibration {self.calibration}")
        lines += [f"note        {note}" for note in self.notes]
        lines += [f"tokenizer   {self.tokenizer}", f"output      {self.output}"]
        return "\n".join(lines)


def convert(
    source: str | Path,
    to: str,
    output: str | Path,
    *,
    max_position_embeddings: int | None = None,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    calibration_text: str | Path | None = None,
) -> ConversionReport:
    """Convert a BERT/RoBERTa checkpoint (directory or Hub id) into the variant ``to`` at ``output``.

    ``max_position_embeddings`` extends (or cuts) the position table; ``overrides`` sets config
    fields of the variant (its mechanism's knobs). A variant with data-estimated state (``routing``'s
    centroids) is calibrated on ``calibration_text`` (a text file; default: a built-in BBC News
    sample) through the source's tokenizer. Raises ``ValueError`` on anything it cannot convert,
    before writing anything.
    """
    variant = get_variant(to)
    output = Path(output)
    steps = tqdm(total=5, desc="effzoo convert", disable=not progress, leave=False)

    steps.set_postfix_str("reading source")
    source_dir = resolve_source(source)
    _check_output(output, source_dir, overwrite)
    source_config = read_source_config(source_dir)
    model_type = source_config["model_type"]
    family = FAMILIES[model_type]
    fields = _source_fields(variant, family, source_config)
    if model_type == "reformer":
        weights = reformer_weights(read_weights(source_dir), fields)
    else:
        weights = canonical_state_dict(read_weights(source_dir), family)
    steps.update()

    steps.set_postfix_str("building model")
    architecture = (source_config.get("architectures") or ["Model"])[0]
    model_class = _target_class(variant, architecture)
    offset = family.position_offset(source_config)
    source_positions = source_config["max_position_embeddings"] - offset
    positions = max_position_embeddings or source_positions
    if fields.get("axial_pos_embds") and positions != source_positions:
        raise ValueError(
            f"Cannot change the positions of a checkpoint with axial position embeddings ({source_positions} -> "
            f"{positions}): they are a grid {fields['axial_pos_shape']}, not a table to tile. Leave "
            "--max-position-embeddings out."
        )
    config = _target_config(variant, fields, positions, overrides or {})
    model = model_class(config).eval()
    steps.update()

    steps.set_postfix_str("carrying weights")
    if POSITION_KEY in weights:
        weights[POSITION_KEY] = resize_positions(weights[POSITION_KEY], offset, positions)
    weights, upcycled = upcycle_feed_forward(weights, config)
    if model_type == "reformer":
        notes = reformer_notes(source_config)
    else:
        notes = [_REVERSIBLE_NOTE] if config.reversible else []
    if upcycled:
        notes.append(f"upcycled: the dense feed-forward of layer(s) {upcycled} copied into each of "
                     f"{config.num_experts} experts; with no token over capacity the model equals its source "
                     f"(eval_capacity_factor >= num_experts / num_experts_per_token guarantees it)")
    prefix = f"{model.base_model_prefix}." if model.base_model is not model else ""
    report = _load(model, with_backbone_prefix(weights, prefix))
    for index, layer in enumerate(model.base_model.encoder.layer):
        attention = layer.attention.self
        if any(f"encoder.layer.{index}.attention.self.mechanism." in key for key in report["new_parameters"]):
            attention.mechanism.init_from_projections(attention.query, attention.key, attention.value)
    calibration = _calibrate(model, source_dir, calibration_text, positions) if needs_calibration(model) else ""
    dtype = weights["embeddings.word_embeddings.weight"].dtype
    model.to(dtype)
    steps.update()

    steps.set_postfix_str("saving")
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent if output.parent.exists() else None))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should not be
    try:
        model.save_pretrained(staging)
        tokenizer_status = _copy_tokenizer(source_dir, staging, positions)
        record_provenance(staging, source={
            "id": str(source), "license": source_license(str(source)), "model_type": model_type,
            "architecture": architecture, "positions": f"{source_positions} -> {positions}",
            "overrides": dict(overrides or {}),
        })
        _publish(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    steps.update()
    steps.close()

    report.update(
        source=str(source), source_model_type=model_type, source_architecture=architecture, variant=variant.name,
        model_class=model_class.__name__, output=str(output), source_positions=source_positions,
        positions=positions, tokenizer=tokenizer_status, overrides=dict(overrides or {}), calibration=calibration,
        notes=notes,
    )
    return ConversionReport(**report)


def _calibrate(model: torch.nn.Module, source_dir: Path, calibration_text: str | Path | None, positions: int) -> str:
    """Calibrate the model's data-estimated state on sample text; what was done, for the report."""
    from transformers import AutoTokenizer

    mechanisms = [module for module in model.modules() if getattr(module, "calibrates", False)]
    methods = "; ".join(sorted({mechanism.calibration_method for mechanism in mechanisms}))
    drawn = "; ".join(sorted({mechanism.conversion_init for mechanism in mechanisms}))
    texts, description = calibration_texts(calibration_text)
    stays = f"so the state stays as drawn ({drawn}); calibrate before use"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_dir)
    except (OSError, ValueError) as error:
        return f"none: the source has no usable tokenizer ({type(error).__name__}), {stays}"
    batch = sample_batch(tokenizer, texts, positions)
    unknown = unknown_share(batch, tokenizer)
    if unknown > 0.5:
        return (f"none: the source's tokenizer reads {unknown:.0%} of the sample ({description}) as unknown tokens "
                f"(it has no vocabulary for it), {stays}")
    calibrate(model, batch)
    tokens = int(batch["attention_mask"].sum())
    return f"{methods}, layer after layer, on {description} ({tokens:,} tokens)"


def _check_output(output: Path, source_dir: Path, overwrite: bool) -> None:
    if output.resolve() == source_dir.resolve() or source_dir.resolve() in output.resolve().parents:
        raise ValueError(f"Output {output} is the source checkpoint or inside it; choose another --output.")
    check_output_dir(output, overwrite)


def _target_class(variant: Variant, architecture: str) -> type:
    suffix = next((s for s in sorted(HEAD_OF_ARCHITECTURE, key=len, reverse=True) if architecture.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"Cannot convert architecture {architecture!r}: effzoo has no matching head.")
    auto_name = HEAD_OF_ARCHITECTURE[suffix]
    classes = variant.model_classes
    if auto_name not in classes:
        raise ValueError(
            f"The {variant.name!r} variant has no {auto_name} model (its attention cannot be causal), "
            f"so a {architecture} checkpoint cannot be converted to it."
        )
    return classes[auto_name]


def _source_fields(variant: Variant, family: SourceFamily, source_config: dict) -> dict[str, Any]:
    """The target config's fields taken from the source: BERT's fields and the source's own settings
    where the variant has them; for a Transformers Reformer, the whole Reformer backbone."""
    if family.prefix == "reformer":
        if variant.name != "reformer":
            raise ValueError(
                f"A Transformers Reformer converts to the 'reformer' variant only (its layers are reversible LSH "
                f"and local attention, which that variant reproduces), not to {variant.name!r}; use --to reformer."
            )
        return reformer_fields(source_config)
    valid = config_fields(variant.config_class)
    fields = {name: source_config[name] for name in BERT_FIELDS if name in source_config}
    fields.update({name: source_config[name] for name in family.settings if name in source_config and name in valid})
    fields.update({name: value for name, value in family.equivalent_settings.items() if name in valid})
    return fields


def _target_config(variant: Variant, fields: dict[str, Any], positions: int, overrides: dict[str, Any]) -> Any:
    """The source's fields, the number of positions, then the user's overrides."""
    config_class = variant.config_class
    valid = config_fields(config_class)
    fields = {**fields, "max_position_embeddings": positions}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(
            f"Unknown setting(s) {unknown} for variant {variant.name!r}. Valid keys: {', '.join(sorted(valid))}."
        )
    fields.update(overrides)
    return config_class(**fields)


def _load(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Load the tensors that fit; account for new and dropped ones; refuse shape mismatches."""
    expected = model.state_dict()
    for key, tensor in weights.items():
        if key in expected and expected[key].shape != tensor.shape:
            raise ValueError(
                f"Source tensor {key} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(expected[key].shape)}; the source config does not describe its weights."
            )
    result = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    mechanism_init = model.base_model.encoder.layer[0].attention.self.mechanism.conversion_init
    new = {key: mechanism_init if ".mechanism." in key else _option_init(key) for key in result.missing_keys
           if key not in tied}
    carried = [key for key in weights if key in expected]
    return {
        "tensors_carried": len(carried),
        "parameters_carried": sum(weights[key].numel() for key in carried),
        "new_parameters": new,
        "dropped": sorted(result.unexpected_keys),
    }


def _option_init(key: str) -> str:
    return next((how for pattern, how in _OPTION_INIT.items() if pattern in key), _RANDOM_INIT)


def _copy_tokenizer(source_dir: Path, target_dir: Path, positions: int) -> str:
    """Save the source's tokenizer with ``model_max_length`` set to the new number of positions."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source_dir)
    except (OSError, ValueError) as error:
        return f"none copied (the source has no usable tokenizer: {error})"
    tokenizer.model_max_length = positions
    tokenizer.save_pretrained(target_dir)
    return f"{type(tokenizer).__name__}, model_max_length={positions}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(staging: Path, output: Path) -> None:
    """Move the finished folder into place, replacing ``output`` only now that all is written."""
    if output.exists():
        shutil.rmtree(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(output))
