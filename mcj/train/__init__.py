"""Training: the schema (``schema``), optimizers and schedules (``optim``), the per-device
steps (``steps``), the trainer (``trainer``) and multi-stage pipelines (``pipeline``).
``python -m mcj.train`` is ``__main__``."""
from mcj.train.schema import default_config, merge_config  # noqa: F401
from mcj.train.steps import cross_entropy  # noqa: F401
from mcj.train.trainer import train_and_evaluate  # noqa: F401
