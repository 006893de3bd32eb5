"""The one exception type users see: a one-line message that says what was wrong and what to do."""


class UserError(Exception):
    """A mistake in the user's input (config, file, data). Entry points print it as one line, exit 2."""


class CheckpointError(UserError):
    """A checkpoint file that is missing, damaged, unsafe or does not fit the model."""


class ConfigError(UserError):
    """A configuration value that is out of range or names something that does not exist."""
