"""The small text world: seeded arithmetic problems with GSM8K-style answers (`task`: the
registered `arithmetic` task). Its tokenizer is the general `char` one."""

from . import task  # noqa: F401  (registration)
