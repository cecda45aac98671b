"""Which modalities a dataset has, and everything that follows from how many there are.

Datasets of the paper have two (image ``v``, text ``t``: the Amazon ones) or three (plus audio
``a``: TikTok). The count decides the mask keys, the models' three-modality branches and the
official missing ratio, so it is answered here once, by one rule.
"""
from __future__ import annotations

from collections.abc import Iterable

ORDER = ("v", "t", "a")  # the canonical order of feature tables, masks and model branches
NAMES = {"v": "image", "t": "text", "a": "audio"}
# Missing-modality groups of a mask: each key names the modalities an item lacks.
MASK_KEYS = {
    2: ("t", "v", "all"),
    3: ("t", "v", "a", "tv", "ta", "va", "all"),
}
_AUDIO_KEYS = frozenset({"a", "tv", "ta", "va"})  # keys only a three-modality mask has


class Modalities(tuple):
    """The modality codes of a dataset in canonical order; a tuple, so ``for m in mods``,
    ``len(mods)`` and ``"a" in mods`` read as usual."""

    def __new__(cls, codes: Iterable[str] = ()):
        codes = tuple(codes)
        unknown = [c for c in codes if c not in ORDER]
        if unknown:
            raise ValueError(f"unknown modality code(s) {unknown}; known: {', '.join(ORDER)} "
                             f"({', '.join(f'{c}={n}' for c, n in NAMES.items())})")
        if len(set(codes)) != len(codes):
            raise ValueError(f"modality codes repeat: {codes}")
        return super().__new__(cls, tuple(c for c in ORDER if c in codes))

    @classmethod
    def of_count(cls, n: int) -> "Modalities":
        """The paper's modalities of an ``n``-modality dataset: image and text, plus audio for three."""
        if n not in MASK_KEYS:
            raise ValueError(f"a multi-modal dataset has 2 or 3 modalities, not {n}")
        return cls(ORDER[:n])

    @classmethod
    def of_mask(cls, keys: Iterable[str]) -> "Modalities":
        """The modalities a mask speaks of (for a folder without feature files): three when any
        key involves audio, else two."""
        return cls.of_count(3 if _AUDIO_KEYS & set(keys) else 2)

    @classmethod
    def resolve(cls, features: Iterable[str], mask_keys: Iterable[str] = ()) -> "Modalities":
        """The feature tables present; for a dataset without any, what its masks speak of."""
        features = tuple(features)
        return cls(features) if features else cls.of_mask(mask_keys)

    @property
    def count(self) -> int:
        return len(self)

    @property
    def has_audio(self) -> bool:
        return "a" in self

    @property
    def mask_keys(self) -> tuple[str, ...]:
        """The groups of a mask over these modalities."""
        if self.count not in MASK_KEYS:
            raise ValueError(f"masks need 2 or 3 modalities, not {self.count} ({', '.join(self) or 'none'})")
        return MASK_KEYS[self.count]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(NAMES[c] for c in self)

    def __repr__(self) -> str:
        return f"Modalities({', '.join(self)})"
