"""3D-CNN backbones as clip feature extractors: a registry of specs and the Ray Data model callable."""

from anomaly.extractors.registry import (
    BackboneSpec,
    available_backbones,
    backbone_help,
    check_layout,
    get_backbone,
    load_backbone,
)
from anomaly.extractors.runner import ClipFeatureExtractor, preprocess_clips, resolve_device

__all__ = [
    "BackboneSpec",
    "ClipFeatureExtractor",
    "available_backbones",
    "backbone_help",
    "check_layout",
    "get_backbone",
    "load_backbone",
    "preprocess_clips",
    "resolve_device",
]
