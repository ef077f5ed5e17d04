"""A user-defined reward, registered by name and loaded through a recipe's `plugins:` list."""

from maskgrpo.registry import rewards


@rewards.register("short_answer")
def short_answer(prompts, completions, max_chars: int = 8, **columns):
    """1 if the completion is at most max_chars characters."""
    return [1.0 if len(c) <= max_chars else 0.0 for c in completions]
