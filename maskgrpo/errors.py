"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class MaskGRPOError(Exception):
    """A mistake in user input (recipe, file, name). Never a bug in the library."""


class RecipeError(MaskGRPOError):
    """A recipe field is missing, unknown, or has the wrong type or value."""


class UnknownComponentError(MaskGRPOError, KeyError):
    """A registry lookup failed; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def format_validation_error(err: "pydantic.ValidationError", prefix: str = "") -> str:  # noqa: F821
    """One line naming the first offending field, e.g. `sampler.steps: Input should be a valid
    integer (got 'abc')`; pydantic's multi-line report is too long for a CLI error."""
    # an unknown field is usually a typo that also causes a "missing" error: report it first
    errors = sorted(err.errors(), key=lambda e: e.get("type") != "extra_forbidden")
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    path = ".".join(p for p in (prefix, loc) if p)
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "field required"
    else:
        message = first.get("msg", "invalid value")
        if "input" in first:
            message += f" (got {first['input']!r})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{path}: {message}{more}"
