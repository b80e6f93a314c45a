"""Sample-quality metrics: feature extractors (`features`), scores on features (`scores`), and the reference
statistics of a dataset (`reference`)."""

from .features import (DEFAULT_DINOV2_MODEL, DINOV2_RESOLUTION, INCEPTION_NAME, DINOv2Features, FeatureExtractor,
                       InceptionV3Features, as_nchw_uint8, default_inception_weights, extract_features,
                       resize_bilinear_tf1)
from .reference import (FASHION_MNIST, DatasetSpec, ModelImages, default_cache_dir, reference_cache_path,
                        reference_statistics)
from .scores import (FeatureStatistics, PrecomputedFeatures, frechet_distance, inception_score,
                     kernel_inception_distance)

__all__ = [
    "DEFAULT_DINOV2_MODEL", "DINOV2_RESOLUTION", "FASHION_MNIST", "INCEPTION_NAME", "DINOv2Features", "DatasetSpec",
    "FeatureExtractor", "FeatureStatistics", "InceptionV3Features", "ModelImages", "PrecomputedFeatures",
    "as_nchw_uint8", "default_cache_dir", "default_inception_weights", "extract_features", "frechet_distance",
    "inception_score", "kernel_inception_distance", "reference_cache_path", "reference_statistics",
    "resize_bilinear_tf1",
]
