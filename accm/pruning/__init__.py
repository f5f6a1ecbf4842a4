"""Token-reduction math: selection, schedules, LLM-side and vision-side pruning, FLOPs."""

from .select import image_scores, select_tokens

__all__ = ["image_scores", "select_tokens"]
