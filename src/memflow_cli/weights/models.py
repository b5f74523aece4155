"""The causal Wan2.1-1.3B models the renderer knows: where their weights live and how they stream.

Every model here is the same network (the causal Wan DiT, `config.json` of Wan2.1-T2V-1.3B) with its own
base weights and built-in LoRA, plus the shared Wan files (VAE, umT5, tokenizer). What differs is a
repository, two file names and a few streaming settings; the render loop never asks which model it runs.
Adding the next such model is one more `ModelSpec` in `MODELS`.

This module imports nothing heavy: the CLI reads it to validate `--model` before any weights load.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from memflow_cli.errors import InputError

WAN_REPO = "Wan-AI/Wan2.1-T2V-1.3B"
DEFAULT_MODEL = "memflow"


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the --model value; also the `pipelineId` Scope writes into timelines made with it
    title: str  # for people: tables, manifest
    repo: str  # Hugging Face repository of the base weights and the built-in LoRA
    base_file: str  # path inside `repo`, and inside a --weights-dir
    lora_file: str
    mirrors: tuple[str, ...] = ()  # repositories with the same files under the same paths
    # StreamSettings fields that differ from the defaults (MemFlow's released configuration).
    stream: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    lora_alpha: float | None = None  # built-in adapter's alpha; None = its rank (scale 1)

    @property
    def has_bank(self) -> bool:
        """Whether it keeps a memory bank, i.e. whether --sma and bank options mean anything."""
        return self.stream.get("bank_size", 1) > 0 and self.stream.get("record_interval", 1) is not None

    @property
    def repos(self) -> tuple[str, ...]:
        return (self.repo, *self.mirrors)

    def stream_settings(self, **overrides):
        """This model's StreamSettings; `overrides` (steps, SMA, …) come from the user."""
        from memflow_cli.engine.generator import StreamSettings

        return StreamSettings(**{**self.stream, **overrides})


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="memflow",
            title="MemFlow",
            repo="KlingTeam/MemFlow",
            base_file="base.pt",
            lora_file="lora.pt",
            mirrors=("daydreamlive/MemFlow",),
        ),
        ModelSpec(
            name="longlive",
            title="LongLive-1.3B",
            repo="Efficient-Large-Model/LongLive-1.3B",
            base_file="models/longlive_base.pt",
            lora_file="models/lora.pt",
            mirrors=("daydreamlive/LongLive-1.3B",),
            stream=MappingProxyType({"bank_size": 0, "record_interval": None}),
        ),
    )
}


def get_model(name: str | None, what: str = "--model") -> ModelSpec:
    """The spec called `name` (None: the default); an unknown name is an InputError listing the known ones."""
    if name is None:
        return MODELS[DEFAULT_MODEL]
    spec = MODELS.get(name.strip().lower()) if isinstance(name, str) else None
    if spec is None:
        raise InputError(f"{what}: unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return spec


def model_for_pipeline(pipeline_id: str | None) -> ModelSpec | None:
    """The model a Scope `pipelineId` names, or None for pipelines we do not have."""
    return MODELS.get(pipeline_id) if isinstance(pipeline_id, str) else None


def choose_model(requested: str | None, pipeline_id: str | None) -> ModelSpec:
    """--model if given, else the model the file was made with when it is one of ours, else the default."""
    if requested is not None:
        return get_model(requested)
    return model_for_pipeline(pipeline_id) or MODELS[DEFAULT_MODEL]


def check_bank_options(spec: ModelSpec, *, sma: bool | None = None, source: str = "--sma") -> None:
    """Bank options (SMA) given for a model without a bank are an input error, not silently ignored."""
    if sma and not spec.has_bank:
        raise InputError(
            f"{source}: {spec.title} has no memory bank, so sparse memory activation does not apply; "
            f"drop {source} or use --model memflow"
        )


def manifest_entry(spec: ModelSpec, weights) -> dict:
    """The manifest's `model`: which model, from which repository and commit, and its files' identities.

    `weights` is hub.WeightPaths; its identities come from the lock file (commit, size, sha256 per file).
    """
    files = weights.describe()
    own = {name: files[name] for name in (spec.base_file, spec.lora_file) if name in files}
    base = own.get(spec.base_file, {})
    return {
        "name": spec.name,
        "title": spec.title,
        "repository": base.get("repo", spec.repo),
        "commit": base.get("commit"),
        "memory_bank": spec.has_bank,
        "files": {name: {k: entry.get(k) for k in ("repo", "commit", "size", "sha256")} for name, entry in own.items()},
    }


def revision_for(text: str | None, model: str) -> str | None:
    """A model's revision from --revision: `REV` (every model's repository) or `memflow=REV,longlive=REV`."""

    if not text or "=" not in text:
        return check_revision(text or None)
    pins = {}
    for part in text.split(","):
        name, sep, rev = part.partition("=")
        if not sep or not rev.strip():
            raise InputError(f"--revision: expected REV or MODEL=REV[,MODEL=REV], got {text!r}")
        pins[get_model(name.strip(), "--revision").name] = check_revision(rev.strip(), f"--revision {name.strip()}")
    return pins.get(model)


_COMMIT = re.compile(r"[0-9a-fA-F]{7,40}")
_REF_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def check_revision(revision: str | None, where: str = "--revision") -> str | None:
    """A revision is a commit hash (7 to 40 hex digits) or a safe ref name (branch or tag: letters, digits,
    `.`, `_`, `-` and `/` between parts; no `..`, no leading or trailing `/`, no empty part, no `.lock` end).
    Anything else (`../../etc/passwd`) is refused before it reaches a cache path or a URL."""
    if revision is None:
        return None
    text = str(revision)
    if _COMMIT.fullmatch(text):
        return text
    parts = text.split("/")
    if (not text or len(text) > 255 or ".." in text or text.endswith(".lock") or text.endswith(".")
            or not all(_REF_PART.fullmatch(part) for part in parts)):
        raise InputError(f"{where}: expected a commit hash (7 to 40 hex digits) or a branch or tag name (letters, "
                         f"digits, '.', '_', '-', parts joined by '/', no '..'), got {text!r}")
    return text
