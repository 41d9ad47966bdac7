"""What every settings section shares: unknown keys are errors, a number is never read from true or
false, and a failed check is said in lines that name the key (a recipe) or the flag (a command)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator


class StrictSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value, info):
        """``true`` is not a number: pydantic would read it as 1 (``--set training.steps=true``: one step)."""
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("a number is needed, not true or false")
        return value


def _numeric(annotation) -> bool:
    """Whether a field holds a number (int or float, optionally None) and not a bool."""
    import typing

    args = typing.get_args(annotation) or (annotation,)
    kinds = {a for a in args if a is not type(None)}
    return bool(kinds) and kinds <= {int, float}


def describe_validation_error(err: ValidationError, source: str, max_lines: int = 20) -> str:
    import reprlib

    # A value is quoted cut to 200 characters: it may be a 1 MB string, a list nested past the
    # recursion limit, or a YAML alias bomb with billions of elements (reprlib reads only a few).
    brief = reprlib.Repr()
    brief.maxstring = brief.maxother = 200

    def shown(value) -> str:
        try:
            text = brief.repr(value)
        except ValueError:  # an int with more digits than Python writes out (sys.get_int_max_str_digits)
            return f"a {type(value).__name__} too large to show"
        return text if len(text) <= 200 else text[:200] + "..."

    def name(part) -> str:
        # Quoted when it would not read as a key: "", " a", "a\nb" (a line break would split the message).
        text = str(part)
        text = text if text and text.isprintable() and text == text.strip() else shown(part)
        return text if len(text) <= 100 else text[:100] + "..."

    errors = err.errors()
    lines = []
    for e in errors[:max_lines]:
        key = ".".join(name(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: {key}: unknown key")
        else:
            got = e.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {shown(got)})"
            msg = e["msg"].removeprefix("Value error, ")  # pydantic's wrapping of our own checks' messages
            # A check of the whole recipe names its keys itself.
            lines.append(f"{source}: {msg}{got_text}" if not e["loc"] else f"{source}: {key}: {msg}{got_text}")
    if len(errors) > max_lines:
        lines.append(f"{source}: ... and {len(errors) - max_lines} more errors")
    return "\n".join(lines)


def from_options(model: type[BaseModel], values: dict, error: type[Exception], options: dict | None = None):
    """``values`` given on a command line, checked by the rules of the recipe section ``model``, so a
    setting has one check whether it comes from a recipe or a flag. The first problem is raised as
    ``error``, naming the flag (``--top-p: 1.5: Input should be less than or equal to 1``)."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        e = err.errors()[0]
        message = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a rule across settings: its own words name them
            raise error(message) from None
        key = str(e["loc"][0])
        option = (options or {}).get(key) or "--" + key.replace("_", "-")
        if message.startswith("must"):  # our own checks read as a sentence: "--prompt-template must contain {trace}"
            raise error(f"{option} {message}") from None
        raise error(f"{option}: {e['input']!r}: {message}") from None


