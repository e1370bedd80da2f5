"""Selective state-space layers (Mamba, Mamba-2) that run exactly on the CPU, drop-in for ``mamba_ssm``."""

from condorbrain.ssm.blocks import (
    Backbone,
    BackboneConfig,
    Block,
    CausalSelfAttention,
    DropPath,
    GatedMLP,
    RMSNorm,
)
from condorbrain.ssm.mamba import Mamba, SSMState
from condorbrain.ssm.mamba2 import Mamba2, RMSNormGated
from condorbrain.ssm.reference import selective_scan_ref, ssd_scan_ref
from condorbrain.ssm.scans import scan_backend, selective_scan, ssd_scan

__all__ = [
    "selective_scan",
    "ssd_scan",
    "selective_scan_ref",
    "ssd_scan_ref",
    "scan_backend",
    "Mamba",
    "Mamba2",
    "SSMState",
    "RMSNorm",
    "RMSNormGated",
    "GatedMLP",
    "DropPath",
    "CausalSelfAttention",
    "Block",
    "BackboneConfig",
    "Backbone",
]
