"""The small reasoning world: seeded running-sum chains whose completions write every step
out left to right before a GSM8K-style answer (`task`: the registered `chain` task). Its
tokenizer is the general `char` one with `;` added to the arithmetic alphabet
(`CHAIN_ALPHABET`)."""

from . import task  # noqa: F401  (registration)
