"""Training objectives, one file each, one call shape: ``objective(model, batch, step) -> LossOutput``.

``DenoisingLoss`` trains teachers; the flow-map distillation objectives (METHODS.md) join it here.
"""

from __future__ import annotations

from .base import Batch, LossOutput
from .denoising import DenoisingConfig, DenoisingLoss
from .meanflow import MeanFlow, MeanFlowConfig
from .timesteps import TimePairs

__all__ = ["Batch", "DenoisingConfig", "DenoisingLoss", "LossOutput", "MeanFlow", "MeanFlowConfig", "TimePairs"]
