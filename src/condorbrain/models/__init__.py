"""CondorBrain policy network (seeds 000 / 001): config, model, and the multi-task loss."""

from condorbrain.models.condorbrain import (
    CondorBrain,
    ExpertDecoder,
    InputEmbedding,
    PolicyOutput,
    RegimeDetector,
    transformer_baseline,
)
from condorbrain.models.config import CondorBrainConfig, MixerKind, check_table_keys, read_config_file
from condorbrain.models.losses import (
    TARGET_KEYS,
    LossWeights,
    bce_with_logits,
    condor_loss,
    cross_entropy,
    huber,
    pinball,
)

__all__ = [
    "TARGET_KEYS",
    "CondorBrain",
    "CondorBrainConfig",
    "read_config_file",
    "ExpertDecoder",
    "InputEmbedding",
    "LossWeights",
    "MixerKind",
    "PolicyOutput",
    "RegimeDetector",
    "bce_with_logits",
    "check_table_keys",
    "condor_loss",
    "cross_entropy",
    "huber",
    "pinball",
    "transformer_baseline",
]
