"""Training: the loop, distributed set-up, checkpoints, schedules."""

from medvlp.train.loop import RunResult, pretrain

__all__ = ["RunResult", "pretrain"]
