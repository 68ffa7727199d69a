"""Every section of a jaxdistill YAML config as a frozen dataclass.

Importing this package imports neither jax nor a teacher: a config can be read, checked
and hashed cheaply (the ``train`` section asks the model registry about its
architecture when it is built, which imports the models).
"""

from jaxdistill.config.active import FINE_TUNE_DEFAULTS, ActiveLearningConfig
from jaxdistill.config.distill import STAGES, DistillConfig, stage_hashes
from jaxdistill.config.keys import as_temperatures, check_keys
from jaxdistill.config.sampling import (
    GENERATORS,
    MDConfig,
    MeltConfig,
    RattleConfig,
    SamplingConfig,
    StrainConfig,
    StructureSpec,
)
from jaxdistill.config.train import TrainConfig, resolve_config
from jaxdistill.config.validation import MDValidationConfig

__all__ = [
    "FINE_TUNE_DEFAULTS",
    "GENERATORS",
    "STAGES",
    "ActiveLearningConfig",
    "DistillConfig",
    "MDConfig",
    "MDValidationConfig",
    "MeltConfig",
    "RattleConfig",
    "SamplingConfig",
    "StrainConfig",
    "StructureSpec",
    "TrainConfig",
    "as_temperatures",
    "check_keys",
    "resolve_config",
    "stage_hashes",
]
