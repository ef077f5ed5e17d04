"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class MaskGRPOError(Exception):
    """A mistake in user input (recipe, file, name). Never a bug in the library."""


class RecipeError(MaskGRPOError):
    """A recipe field is missing, unknown, or has the wrong type or value."""


class UnreadableFile(MaskGRPOError):
    """A user's file that cannot be read (not a regular file, not an image, too large): the
    message is "<path>: <reason>"; `path` and `reason` are kept apart for reports."""

    def __init__(self, path: object, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class UnknownComponentError(MaskGRPOError, KeyError):
    """A registry lookup failed; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def quote(value: object, limit: int = 120) -> str:
    """repr() of a user's value, cut to `limit` characters: an error message must stay one line
    however large (or however expanded by YAML aliases) the value is."""
    import reprlib

    r = reprlib.Repr()  # Python 3.11's Repr takes its limits as attributes
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict = 3, limit, limit, 8, 8
    short = r.repr(value)
    return short if len(short) <= limit else short[: limit - 3] + "..."


def no_bool_for_numbers(value: object, annotation: object, name: str) -> object:
    """YAML reads `yes`/`no`/`true` as booleans, and pydantic would turn them into 1/0 for an int
    or float field: refuse that instead of silently changing a setting."""
    import typing

    allowed = set(typing.get_args(annotation)) | {annotation}
    if isinstance(value, bool) and bool not in allowed and allowed & {int, float}:
        raise ValueError(f"expected a number, got the boolean {value}")
    return value


def sorted_errors(err: "pydantic.ValidationError") -> list[dict]:  # noqa: F821
    """pydantic's errors, an unknown field first: it is usually a typo that also causes a
    "missing" error, so it is the one to report."""
    return sorted(err.errors(), key=lambda e: e.get("type") != "extra_forbidden")


def format_validation_error(err: "pydantic.ValidationError", prefix: str = "") -> str:  # noqa: F821
    """One line naming the first offending field, e.g. `sampler.steps: Input should be a valid
    integer (got 'abc')`; pydantic's multi-line report is too long for a CLI error."""
    errors = sorted_errors(err)
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    path = ".".join(p for p in (prefix, loc) if p)
    kind = first.get("type", "")
    if not loc and kind == "value_error":  # a model-level check: its message names the fields
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return f"{prefix}: {message}" if prefix else message
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "missing":
        message = "field required"
    else:
        message = first.get("msg", "invalid value")
        if "input" in first:
            message += f" (got {quote(first['input'])})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{path}: {message}{more}"
