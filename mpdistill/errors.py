"""The error every check of settings raises: what cannot be run, said in one line that names the
file, key, option or model to fix. The command line prints it as ``error: ...`` with exit code 2."""


class ConfigError(ValueError):
    """A recipe, option or model that cannot be used; the message names the file and the key."""


def one_line(text: object) -> str:
    """A message from a library (huggingface_hub's span several lines) as one line of an ``error:``."""
    return " ".join(str(text).split())


class HubError(RuntimeError):
    """The Hugging Face Hub could not be reached or refused a push; the message says what was kept
    locally and how to push it again."""
