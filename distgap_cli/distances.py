"""Distance names, their aliases and the properties the rest of distgap asks about.

Pure Python, so that the command line can check a ``--distance`` value without
importing TensorFlow. The maths lives in :mod:`distgap_cli.core`.
"""

from __future__ import annotations

import enum

from distgap_cli.errors import UsageError


class Distance(enum.StrEnum):
    """The distances distgap computes, named as TensorFlow Similarity names them."""

    COSINE = "cosine"
    EUCLIDEAN = "euclidean"
    SQUARED_EUCLIDEAN = "squared_euclidean"
    MANHATTAN = "manhattan"
    INNER_PRODUCT = "inner_product"
    SNR = "snr"

    @property
    def is_similarity(self) -> bool:
        """True for inner_product, where larger means closer."""
        return self is Distance.INNER_PRODUCT

    @property
    def needs_direction(self) -> bool:
        """True when a zero vector has no defined value (cosine)."""
        return self is Distance.COSINE

    @property
    def needs_variance(self) -> bool:
        """True when a row with zero variance has no defined value (snr)."""
        return self is Distance.SNR


_ALIASES: dict[str, Distance] = {
    "cosine": Distance.COSINE,
    "cosinedistance": Distance.COSINE,
    "euclidean": Distance.EUCLIDEAN,
    "l2": Distance.EUCLIDEAN,
    "pythagorean": Distance.EUCLIDEAN,
    "euclideandistance": Distance.EUCLIDEAN,
    "squared_euclidean": Distance.SQUARED_EUCLIDEAN,
    "sqeuclidean": Distance.SQUARED_EUCLIDEAN,
    "sql2": Distance.SQUARED_EUCLIDEAN,
    "squaredeuclideandistance": Distance.SQUARED_EUCLIDEAN,
    "manhattan": Distance.MANHATTAN,
    "l1": Distance.MANHATTAN,
    "taxicab": Distance.MANHATTAN,
    "manhattandistance": Distance.MANHATTAN,
    "inner_product": Distance.INNER_PRODUCT,
    "ip": Distance.INNER_PRODUCT,
    "innerproductsimilarity": Distance.INNER_PRODUCT,
    "snr": Distance.SNR,
    "snrdistance": Distance.SNR,
    "signal-to-noise-ratio": Distance.SNR,
}


def valid_names() -> list[str]:
    """Every accepted spelling, canonical names first."""
    canonical = [d.value for d in Distance]
    return canonical + sorted(set(_ALIASES) - set(canonical))


def canonical(name: str | Distance) -> Distance:
    """Map a distance name or alias (case-insensitive) to its :class:`Distance`.

    Raises:
        UsageError: if the name is not a known distance.
    """
    if isinstance(name, Distance):
        return name
    key = str(name).strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    allowed = ", ".join(d.value for d in Distance)
    raise UsageError(
        f"unknown distance {name!r}; expected one of: {allowed} (or 'all'), "
        f"or an alias such as l2, l1, sqeuclidean, ip"
    )


def parse_selection(names: list[str]) -> list[Distance]:
    """Resolve repeated ``--distance`` values, with ``all``, in a stable order."""
    chosen: list[Distance] = []
    for name in names or ["cosine"]:
        picked = list(Distance) if name.strip().lower() == "all" else [canonical(name)]
        for distance in picked:
            if distance not in chosen:
                chosen.append(distance)
    return chosen
