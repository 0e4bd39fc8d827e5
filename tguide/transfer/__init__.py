"""Transferability-guided training: the OTCE pre-fine-tune (seed 002) and the few-shot protocol."""

from tguide.transfer.fewshot import mean_ci, run_protocol
from tguide.transfer.otce_pretune import finetune, otce_pretune, otce_task_loss

__all__ = ["otce_task_loss", "otce_pretune", "finetune", "run_protocol", "mean_ci"]
