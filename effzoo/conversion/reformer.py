"""Transformers' Reformer -> effzoo's ``reformer`` variant, computing what the source computed.

A Transformers ``ReformerModel`` is effzoo's backbone with the Reformer options set: reversible
layers whose two streams leave the encoder side by side (``reversible_merge="concat"``), no
LayerNorm after the embeddings, axial position embeddings, an LM head without BERT's transform,
no token types, no biases on the attention projections, and a per-layer mix of attention types
(``attn_layers``). Its LSH layers are shared query-key LSH attention under Reformer's chunk
pattern (``lsh_attention_pattern="chunks"``) with the rotations of its ``hash_seed``; its local
layers are the same mechanism with one bucket and one round, separate Q and K, and the local
chunk settings, given per layer through ``layer_attention``.

The converted model equals the source in eval (the conversion test: 1e-5) for inputs whose
length is a multiple of every chunk length, with right padding; at other lengths Transformers
pads the input with extra chunks of padding that its cyclic chunk windows then see, so the two
differ in the tokens next to a round's boundary.
"""

from __future__ import annotations

import re
from typing import Any

import torch

#: Transformers' per-layer names (after ``encoder.layers.N.``) -> effzoo's (after ``encoder.layer.N.``).
_LAYER_RENAMES = {
    "attention.layer_norm.": "attention.output.LayerNorm.",
    "attention.self_attention.query.": "attention.self.query.",
    "attention.self_attention.key.": "attention.self.key.",
    "attention.self_attention.value.": "attention.self.value.",
    "attention.output.dense.": "attention.output.dense.",
    "feed_forward.layer_norm.": "output.LayerNorm.",
    "feed_forward.dense.dense.": "intermediate.dense.",
    "feed_forward.output.dense.": "output.dense.",
}

#: Transformers' names outside the layers -> effzoo's.
_RENAMES = {
    "embeddings.position_embeddings.embedding.weight": "embeddings.position_embeddings.weight",
    "encoder.layer_norm.": "encoder.LayerNorm.",
    "lm_head.decoder.weight": "cls.predictions.decoder.weight",
    "lm_head.bias": "cls.predictions.bias",
    "classifier.dense.": "pooler.dense.",
    "classifier.out_proj.": "classifier.",
}

#: Source tensors that effzoo keeps elsewhere: the LM decoder's bias is the head's ``bias`` (tied).
_DUPLICATES = ("lm_head.decoder.bias",)

#: Settings of the task heads, carried as they are.
_HEAD_FIELDS = ("id2label", "label2id", "problem_type", "classifier_dropout")

_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.*)$")


def reformer_fields(source: dict[str, Any]) -> dict[str, Any]:
    """The ``EffzooReformerConfig`` fields of a Transformers ``ReformerConfig`` (as its config.json dict).

    Raises ``ValueError`` naming each setting the conversion cannot reproduce.
    """
    _check_convertible(source)
    attn_layers = list(source["attn_layers"])
    local = {
        "num_buckets": 1, "num_hashes": 1, "shared_qk": False,
        "lsh_chunk_length": source.get("local_attn_chunk_length", 64),
        "lsh_num_chunks_before": source.get("local_num_chunks_before", 1),
        "lsh_num_chunks_after": source.get("local_num_chunks_after", 0),
        "attention_probs_dropout_prob": source.get("local_attention_probs_dropout_prob", 0.1),
    }
    fields = {
        "vocab_size": source["vocab_size"],
        "hidden_size": source["hidden_size"],
        "num_hidden_layers": len(attn_layers),
        "num_attention_heads": source["num_attention_heads"],
        "intermediate_size": source["feed_forward_size"],
        "hidden_act": source.get("hidden_act", "relu"),
        "hidden_dropout_prob": source.get("hidden_dropout_prob", 0.05),
        "attention_probs_dropout_prob": source.get("lsh_attention_probs_dropout_prob", 0.0),
        "max_position_embeddings": source["max_position_embeddings"],
        "type_vocab_size": 1,
        "initializer_range": source.get("initializer_range", 0.02),
        "layer_norm_eps": source.get("layer_norm_eps", 1e-12),
        "pad_token_id": source.get("pad_token_id", 0),
        "bos_token_id": source.get("bos_token_id"),
        "eos_token_id": source.get("eos_token_id", 2),
        "is_decoder": source.get("is_decoder", False),
        "tie_word_embeddings": source.get("tie_word_embeddings", False),
        "chunk_size_feed_forward": source.get("chunk_size_feed_forward", 0),
        # The Reformer backbone
        "reversible": True,
        "reversible_merge": "concat",
        "embedding_layer_norm": False,
        "lm_head_transform": False,
        "axial_pos_embds": source.get("axial_pos_embds", True),
        "axial_pos_shape": list(source.get("axial_pos_shape", [64, 64])),
        "axial_pos_embds_dim": list(source.get("axial_pos_embds_dim", [64, 192])),
        # LSH attention as Reformer's code runs it
        "num_hashes": source.get("num_hashes", 1),
        "num_buckets": source["num_buckets"],
        "lsh_chunk_length": source.get("lsh_attn_chunk_length", 64),
        "lsh_num_chunks_before": source.get("lsh_num_chunks_before", 1),
        "lsh_num_chunks_after": source.get("lsh_num_chunks_after", 0),
        "shared_qk": True,
        "hash_seed": source["hash_seed"] if source.get("hash_seed") is not None else 0,
        "lsh_attention_pattern": "chunks",
        "layer_attention": [local if kind == "local" else {} for kind in attn_layers],
    }
    fields.update({name: source[name] for name in _HEAD_FIELDS if name in source})
    return fields


def reformer_weights(state_dict: dict[str, torch.Tensor], fields: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The source tensors under effzoo's names (backbone keys without a prefix), with the tensors the
    source does not have and that must be zero for the same function: the attention projections'
    biases and the single token-type row. An LSH layer's shared ``query_key`` becomes both ``query``
    and ``key`` (shared query-key attention reads the query; the key is what a separate-QK model
    would start from)."""
    weights: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        key = key.removeprefix("reformer.")
        if key in _DUPLICATES:
            continue
        layer = _LAYER.match(key)
        if layer:
            index, rest = layer.groups()
            if rest.startswith("attention.self_attention.query_key."):
                for name in ("query", "key"):
                    weights[f"encoder.layer.{index}.attention.self.{name}.weight"] = tensor
                continue
            renamed = next((rest.replace(old, new, 1) for old, new in _LAYER_RENAMES.items() if rest.startswith(old)),
                           None)
            if renamed is None:
                raise ValueError(f"Cannot convert the Reformer tensor {key!r}: effzoo has no place for it.")
            weights[f"encoder.layer.{index}.{renamed}"] = tensor
            continue
        weights[next((key.replace(old, new, 1) for old, new in _RENAMES.items() if key.startswith(old)), key)] = tensor
    word = weights["embeddings.word_embeddings.weight"]
    weights["embeddings.token_type_embeddings.weight"] = word.new_zeros(1, word.shape[1])
    for index in range(fields["num_hidden_layers"]):
        for name in ("self.query", "self.key", "self.value", "output.dense"):
            weights[f"encoder.layer.{index}.attention.{name}.bias"] = word.new_zeros(word.shape[1])
    return weights


def _check_convertible(source: dict[str, Any]) -> None:
    problems = []
    kinds = source.get("attn_layers") or []
    if not kinds or any(kind not in ("local", "lsh") for kind in kinds):
        problems.append(f"attn_layers must be a list of 'local' and 'lsh', got {kinds!r}")
    if source.get("num_buckets") is None and "lsh" in kinds:
        problems.append("num_buckets is None: Transformers picks it from the first input's length at run time; "
                        "set it in the source config to the value the model was trained with")
    head_size = source.get("attention_head_size")
    if head_size is not None and head_size * source["num_attention_heads"] != source["hidden_size"]:
        problems.append(f"attention_head_size {head_size} × num_attention_heads {source['num_attention_heads']} "
                        f"differs from hidden_size {source['hidden_size']}; effzoo's heads split hidden_size")
    if problems:
        raise ValueError("Cannot convert this Reformer checkpoint: " + "; ".join(problems) + ".")


def reformer_notes(source: dict[str, Any]) -> list[str]:
    """What the report should say about a Reformer conversion."""
    notes = [
        "a Transformers Reformer: reversible two-stream layers merged side by side, axial positions, "
        "LSH layers as shared query-key 'chunks' LSH and local layers as one-bucket LSH (layer_attention); "
        "exact in eval for lengths that are a multiple of every chunk length, with right padding",
    ]
    if source.get("hash_seed") is None:
        notes.append("the source has no hash_seed, so it hashed with fresh random rotations on every forward; "
                     "the converted model hashes with the fixed rotations of hash_seed=0")
    return notes
