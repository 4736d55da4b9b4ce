"""`xtalign distill`'s one typed config: frozen keyword-only dataclasses, loaded strictly from YAML.

A run is a student, one or more teachers (each with its loss and projection), data, optimiser,
schedule, batch geometry, eval, checkpoint and logging settings (`run`, `models`); `load` reads YAML +
dotted overrides and refuses unknown keys naming the closest valid one.
"""

from xtalign.distill.config.load import config_from_dict, config_to_dict, load_config
from xtalign.distill.config.models import ArchConfig, LossName, ProjectionSpec, StudentConfig, TeacherConfig
from xtalign.distill.config.run import (
    CheckpointConfig,
    CombineConfig,
    DataConfig,
    DistillConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    PolicyConfig,
    RayConfig,
    ScheduleConfig,
)

__all__ = ["ArchConfig", "CheckpointConfig", "CombineConfig", "DataConfig", "DistillConfig", "EvalConfig",
           "LogConfig", "LossName", "OptimConfig", "PolicyConfig", "ProjectionSpec", "RayConfig", "ScheduleConfig",
           "StudentConfig", "TeacherConfig", "config_from_dict", "config_to_dict", "load_config"]
