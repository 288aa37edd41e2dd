"""Models: registries, blocks, backbones, heads and the one YAML graph parser.

Importing the package imports every module that registers entries, so the registries are complete.
"""
from models import attention, backbones, blocks, conv, dcn, elan, heads, psa  # noqa: F401  (registration)
from models.model import SegmentationModel, build_model, model_config  # noqa: F401
from models.registry import BACKBONES, HEADS, MODULES  # noqa: F401
