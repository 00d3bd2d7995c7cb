"""Quality metrics: FID / IS / KID / precision-recall through torch-fidelity (Inception or domain
features) and class consistency for the synthetic shapes data.

Importing this package registers the feature extractors in ``nar_bench.registry.FEATURE_EXTRACTORS``
(and the domain extractor with torch-fidelity).
"""

from nar_bench.images import to_uint8
from nar_bench.metrics.domain import (
    ClassConsistency,
    DomainClassifierSpec,
    class_consistency,
    domain_classifier,
)
from nar_bench.metrics.fidelity import METRICS, evaluate_samples, reference_cache_id

__all__ = [
    "METRICS",
    "ClassConsistency",
    "DomainClassifierSpec",
    "class_consistency",
    "domain_classifier",
    "evaluate_samples",
    "reference_cache_id",
    "to_uint8",
]
