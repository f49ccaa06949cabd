"""Training objectives, one file each, one call shape: ``objective(model, batch, step) -> LossOutput``.

``DenoisingLoss`` trains teachers; the others distil a teacher into a flow-map student (docs/methods.md).
"""

from __future__ import annotations

from .base import Batch, DistillationConfig, LossOutput, TargetNetwork
from .consistency import ConsistencyDistillation, ConsistencyDistillationConfig
from .continuous_consistency import ContinuousConsistency, ContinuousConsistencyConfig
from .ctm import CTM, CTMConfig
from .denoising import DenoisingConfig, DenoisingLoss
from .dmd import DistributionMatching, DMDConfig
from .eulerian import EulerianMap, EulerianMapConfig
from .lagrangian import LagrangianMap, LagrangianMapConfig
from .meanflow import MeanFlow, MeanFlowConfig
from .progressive import Progressive, ProgressiveConfig
from .shortcut import Shortcut, ShortcutConfig
from .timesteps import TimePairs
from .trajectory import TrajectoryConfig, TrajectoryDistillation

# name -> (objective, config) for configs and the command line
OBJECTIVES = {
    "consistency": (ConsistencyDistillation, ConsistencyDistillationConfig),
    "continuous_consistency": (ContinuousConsistency, ContinuousConsistencyConfig),
    "meanflow": (MeanFlow, MeanFlowConfig),
    "eulerian": (EulerianMap, EulerianMapConfig),
    "lagrangian": (LagrangianMap, LagrangianMapConfig),
    "shortcut": (Shortcut, ShortcutConfig),
    "ctm": (CTM, CTMConfig),
    "progressive": (Progressive, ProgressiveConfig),
    "trajectory": (TrajectoryDistillation, TrajectoryConfig),
    "dmd": (DistributionMatching, DMDConfig),
}

__all__ = [
    "CTM", "OBJECTIVES", "Batch", "CTMConfig", "ConsistencyDistillation", "ConsistencyDistillationConfig",
    "ContinuousConsistency", "ContinuousConsistencyConfig", "DMDConfig", "DenoisingConfig", "DenoisingLoss",
    "DistillationConfig", "DistributionMatching",
    "EulerianMap", "EulerianMapConfig", "LagrangianMap", "LagrangianMapConfig", "LossOutput", "MeanFlow",
    "MeanFlowConfig", "Progressive", "ProgressiveConfig", "Shortcut", "ShortcutConfig", "TargetNetwork", "TimePairs",
    "TrajectoryConfig", "TrajectoryDistillation",
]
