"""Interventions: steer transcoder features, ablate image regions, compare answers and generations.

    from tracer.interventions import FeatureIntervention, intervene, steered_generate, ablate_region

    r = intervene(session, "What color is the circle?", image,
                  [FeatureIntervention(2, 17, "ablate"), FeatureIntervention(3, 5, "set", 8.0, "last")])
    print(r.format())
    before, after = steered_generate(session, "What color is the circle?", image, [...])
    r = ablate_region(session, "What color is the circle?", image, [(0, 2, 3), (0, 2, 4)], mode="mean")

See docs/interventions.md.
"""

from tracer.interventions.common import Bundle, NextTokenComparison, TokenProb, as_bundle, image_cell_positions
from tracer.interventions.region import REGION_MODES, RegionAblationResult, ablate_region, region_positions
from tracer.interventions.steering import (
    MODES, POSITION_KEYWORDS, FeatureIntervention, InterventionResult, SteeringState, feature_activations,
    generate_ids, intervene, parse_positions, resolve_positions, steered_generate, steering_hooks,
)

__all__ = [
    "MODES", "POSITION_KEYWORDS", "REGION_MODES", "Bundle", "FeatureIntervention", "InterventionResult",
    "NextTokenComparison", "RegionAblationResult", "SteeringState", "TokenProb", "ablate_region", "as_bundle",
    "feature_activations", "generate_ids", "image_cell_positions", "intervene", "parse_positions",
    "region_positions", "resolve_positions", "steered_generate", "steering_hooks",
]
