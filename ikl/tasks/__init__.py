"""Methods: knowledge distillation and adversarial training, behind one task contract."""

from ikl.tasks.base import Task
from ikl.tasks.kd import DistillationTask, freeze, warmup_factor

__all__ = ["DistillationTask", "Task", "freeze", "warmup_factor"]
