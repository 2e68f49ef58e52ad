"""The params' section base, and one section per modality: what an example is made of and which
backbones take it (`images:`, `texts:`), so that no other section names what an image or a text
is. `upgrade` reads params written before these sections existed.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Strategy = Literal["head", "top", "full", "scratch", "raw"]  # the search's (tasks/search/strategy.py)

CANDIDATE_URI = re.compile(
    r"registry:[A-Za-z0-9][A-Za-z0-9._-]{0,99}([@/][A-Za-z0-9._-]{1,100})?"  # model[@alias|/version]
    r"|keras:[A-Za-z][A-Za-z0-9_]{0,99}"  # a keras.applications name (checked as the run starts)
    r"|lite0:imagenet"
    r"|minilm:all-MiniLM-L6-v2"
    r"|keras_hub:[A-Za-z0-9_./:-]{1,300}"  # a KerasHub BERT preset: name, kaggle://, hf:// or a folder
    r"|file:.+\.keras"
)


class Candidate(Section):
    """A pretrained backbone; its URI's forms: `CANDIDATE_URI` (tasks/selection/families.py)."""

    uri: str
    weights: str | None = None  # keras: only; "imagenet" needs internet, "none" or a file path
    size: int | None = Field(None, ge=8, le=1024)  # keras: only, its input side (224); others fix their own

    @field_validator("uri")
    @classmethod
    def _known_form(cls, value: str) -> str:
        if not CANDIDATE_URI.fullmatch(value):
            raise ValueError(
                "a candidate is registry:<model>@<alias> (or /<version>), keras:<Application>, "
                "lite0:imagenet, minilm:all-MiniLM-L6-v2, keras_hub:<BERT preset> or file:<path>.keras"
            )
        return value


class _Candidates(Section):
    candidates: tuple[Candidate, ...] = Field(min_length=1)

    @field_validator("candidates", mode="before")
    @classmethod
    def _uri_strings(cls, value: Any) -> Any:
        """A candidate may be written as its URI alone."""
        if isinstance(value, (list, tuple)):
            return [{"uri": c} if isinstance(c, str) else c for c in value]
        return value


class ImagesParams(_Candidates):
    """Images (tasks/modality/pixels.py): `<raw>/<class>/<image file>`."""

    candidates: tuple[Candidate, ...] = Field(
        (Candidate(uri="registry:transferops-backbone@pretrained"), Candidate(uri="lite0:imagenet")),
        min_length=1,
    )
    # The input side of a backbone that does not fix one (the pretraining CNN, a keras:
    # candidate that names none takes 224); every other backbone takes its own input size.
    size: int = Field(32, ge=8, le=1024)
    resize: Literal["squash", "crop", "pad"] = "squash"  # how an image becomes a square (training = serving)
    min_side: int = Field(8, ge=1)  # smallest accepted width/height in pixels
    max_pixels: int = Field(40_000_000, ge=1)  # larger images are refused as decompression bombs
    formats: tuple[str, ...] = Field(("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"), min_length=1)
    # Augmentation of the search's training batches (never at inference); flips are off: they
    # change what text, digits or left/right mean.
    flip: bool = False
    shift: float = Field(0.1, ge=0, lt=1)  # fraction of the height/width
    rotate: float = Field(0.05, ge=0, lt=1)  # fraction of a full turn
    contrast: float = Field(0.1, ge=0, lt=1)


class TextsParams(_Candidates):
    """Texts (tasks/modality/tokens.py): `<raw>/<class>/<name>.txt`, UTF-8, or one CSV, JSONL
    or Parquet file (tasks/data/tables.py) with a text and a label column."""

    candidates: tuple[Candidate, ...] = Field((Candidate(uri="minilm:all-MiniLM-L6-v2"),), min_length=1)
    window: int = Field(256, ge=8, le=512)  # tokens the encoder reads at once ([CLS], [SEP] included)
    # Windows read of a long text, one after the other, their embeddings averaged (1: its first
    # window only). BBC News articles average about 2,000 characters, 437 tokens.
    windows: int = Field(4, ge=1, le=64)
    # The search's strategies on texts, in place of search.strategies (the images'): `top`,
    # `full` and `scratch` train the encoder on streamed tokens, minutes an epoch on 2 cores.
    strategies: tuple[Strategy, ...] = Field(("head", "raw"), min_length=1)
    fuse_raw: bool = True  # the chosen trial averaged with TF-IDF's unless it leads that (search.fuse_raw)
    text_column: str = Field("text", min_length=1)  # of a table file
    label_column: str = Field("label", min_length=1)


# Keys of params written before the per-modality sections: (section, key) -> (section, key).
MOVED = {
    ("data", "image_size"): ("images", "size"),
    ("data", "resize"): ("images", "resize"),
    ("validate", "min_images_per_class"): ("validate", "min_per_class"),
    ("validate", "min_side"): ("images", "min_side"),
    ("validate", "max_pixels"): ("images", "max_pixels"),
    ("validate", "formats"): ("images", "formats"),
    ("select", "candidates"): ("images", "candidates"),
    **{("augment", key): ("images", key) for key in ("flip", "shift", "rotate", "contrast")},
}


def _candidate(value: Any) -> Any:
    if isinstance(value, dict) and "image_size" in value:
        value = {("size" if k == "image_size" else k): v for k, v in value.items()}
    return value


def upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """`values` ({section: {key: value}}) with the keys of `MOVED` where they are now; a
    keras: candidate's `image_size` is its `size`. Anything else is left for the checks."""
    out = {s: dict(v) if isinstance(v, dict) else v for s, v in values.items()}
    for (section, key), (to_section, to_key) in MOVED.items():
        old = out.get(section)
        if isinstance(old, dict) and key in old:
            value = old.pop(key)
            if (section, key) == ("select", "candidates") and isinstance(value, (list, tuple)):
                value = [_candidate(c) for c in value]
            target = out.setdefault(to_section, {})
            if isinstance(target, dict):
                target.setdefault(to_key, value)
            if not old and section == "augment":
                del out[section]
    search = out.get("search")
    if isinstance(search, dict) and isinstance(search.get("strategies"), (list, tuple)):
        search["strategies"] = ["raw" if s == "pixels" else s for s in search["strategies"]]  # renamed
    for section in ("images", "texts"):
        found = out.get(section)
        if isinstance(found, dict) and isinstance(found.get("candidates"), (list, tuple)):
            found["candidates"] = [_candidate(c) for c in found["candidates"]]
    return out
