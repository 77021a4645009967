"""The PinSage model in plain PyTorch, its losses (``loss``), and construction from the config."""
from __future__ import annotations

from pipeline.model.layers import AGGREGATORS, PinSageConv
from pipeline.model.loss import max_margin_loss
from pipeline.model.pinsage import ID_EMBEDDINGS, PinSage, hash_ids

__all__ = ["AGGREGATORS", "ID_EMBEDDINGS", "SPEC_DEFAULTS", "PinSage", "PinSageConv",
           "build_model", "hash_ids", "max_margin_loss", "spec_value"]


# Model settings added after models were first published, with the value every
# model published before then was trained with (its manifest lacks the key).
SPEC_DEFAULTS = {"head_layers": 0, "item_bias": False, "query_offsets": False}


def spec_value(spec, name: str):
    """``name`` of a ``ModelConfig`` or a published model's spec, old specs included."""
    if isinstance(spec, dict):
        return spec[name] if name in spec else SPEC_DEFAULTS[name]
    return getattr(spec, name) if hasattr(spec, name) else SPEC_DEFAULTS[name]


def build_model(cfg_model, feature_dim: int, num_items: int) -> PinSage:
    """PinSage from ``ModelConfig`` fields, or a published spec (``SPEC_DEFAULTS`` fill gaps)."""
    head_layers = int(spec_value(cfg_model, "head_layers"))
    return PinSage(feature_dim=feature_dim, hidden_dim=int(cfg_model.hidden_dim),
                   num_layers=int(cfg_model.num_layers), aggregator=str(cfg_model.aggregator),
                   num_items=num_items, id_embedding=str(cfg_model.id_embedding),
                   id_buckets=int(cfg_model.id_buckets), head_layers=head_layers,
                   item_bias=bool(spec_value(cfg_model, "item_bias")),
                   query_offsets=bool(spec_value(cfg_model, "query_offsets")))
