"""Errors that reach users: the CLI prints their message and exits non-zero, without a traceback."""


class UserError(Exception):
    """Bad input from a user (option, config, file, profile): the message says what and why."""


class ConfigError(UserError):
    """An instrument configuration file is missing, malformed or inconsistent."""


class InstrumentError(RuntimeError):
    """An operation on the instrument failed; the message names the device and the cause."""
