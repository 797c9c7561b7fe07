"""A frozen backbone with a trained linear head on its pooled hidden states: the "probe" detector.

Fine-tuning a small backbone on the labelled sources learns the sources (held-out-source AUROC 0.69);
a linear head on the frozen backbone's mean-pooled hidden states of every layer keeps the backbone's
general notion of topic and stance and generalises better (docs/RESULTS.md, leave-one-source-out).
The head weights are a few KB (`probe.safetensors`); an optional second head names a harm category.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WEIGHTS_NAME = "probe.safetensors"


@dataclass
class ProbeOutput:
    """What a probe returns: the harm logit (batch, 1) and the category logits (batch, n) or None."""

    logits: torch.Tensor
    category_logits: torch.Tensor | None = None


def pooled_features(backbone: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """Mask-weighted mean of the hidden states of each layer in `layers`, concatenated: (batch, len(layers) * hidden)."""
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    mask = attention_mask.unsqueeze(-1).to(out.hidden_states[0].dtype)
    denom = mask.sum(1).clamp(min=1.0)
    return torch.cat([(out.hidden_states[i] * mask).sum(1) / denom for i in layers], dim=-1)


class PooledProbe(torch.nn.Module):
    """Backbone (frozen) → pooled layers → standardise → linear harm head (+ optional category head).

    Called like a sequence classifier: `model(input_ids=..., attention_mask=...).logits` is (batch, 1).
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, backbone: Any, layers: Sequence[int], n_categories: int = 0):
        super().__init__()
        self.backbone = backbone
        self.layers = list(layers)
        width = backbone.config.hidden_size * len(self.layers)
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.head = torch.nn.Linear(width, 1)
        self.category_head = torch.nn.Linear(width, n_categories) if n_categories else None

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Standardised pooled features, the input of both heads."""
        return (pooled_features(self.backbone, input_ids, attention_mask, self.layers) - self.mean) / self.scale

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> ProbeOutput:
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        feats = self.features(input_ids, mask)
        return ProbeOutput(self.head(feats), self.category_head(feats) if self.category_head is not None else None)

    def head_state(self) -> dict[str, torch.Tensor]:
        """Only the trained parts (standardisation + heads); the backbone is the public checkpoint."""
        return {k: v.detach().float().contiguous() for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def save(self, path: str | os.PathLike[str], name: str = WEIGHTS_NAME) -> None:
        """Write the head weights to `path/name`."""
        from safetensors.torch import save_file

        save_file(self.head_state(), str(Path(path) / name))

    def load_heads(self, path: str | os.PathLike[str], name: str = WEIGHTS_NAME) -> None:
        """Read the head weights saved by `save`."""
        from safetensors.torch import load_file

        self.load_state_dict(load_file(str(Path(path) / name)), strict=False)


def build_probe(backbone_name: str, layers: Sequence[int], n_categories: int = 0) -> PooledProbe:
    """A probe with untrained heads on the named (bundled, local or hub) backbone."""
    from transformers import AutoModel

    from .models import load_model

    return PooledProbe(load_model(backbone_name, AutoModel), layers, n_categories).eval()
