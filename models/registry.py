"""The model registries: backbones, heads and YAML-graph modules (see utils.registry.Registry)."""
from utils.registry import Registry

BACKBONES = Registry("backbone")
HEADS = Registry("head")
MODULES = Registry("module")  # blocks usable as rows of a YAML graph
ACTIVATIONS = Registry("activation")  # a YAML graph's `activation:` (models/conv.py)

__all__ = ["Registry", "BACKBONES", "HEADS", "MODULES", "ACTIVATIONS"]
