"""The one exception type for bad user input; the CLI prints it as a single line."""


class ConfigError(ValueError):
    """A user-supplied value (model, corpus, bit-width, length, file) cannot be used; the message says what to fix."""
