"""Typed errors. Library code raises these; only the CLI turns them into exit codes."""

from __future__ import annotations


class ClusterError(Exception):
    """Base of every error tflite-cluster raises on purpose (exit code 2 in the CLI)."""


class InputFileError(ClusterError):
    """A model, config or data file that cannot be read or is invalid."""

    def __init__(self, path, message):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class InvalidModelError(InputFileError):
    """The bytes are not a valid .tflite model (or not one we can safely rewrite)."""


class UnsupportedModelError(InputFileError):
    """A valid model using a feature tflite-cluster cannot handle."""


class ConfigError(ClusterError):
    """Bad configuration: unknown keys, bad values, conflicting settings."""


class OutputError(ClusterError):
    """The output cannot be written (exists without --force, unwritable folder, I/O error)."""

    def __init__(self, path, message):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class MissingExtraError(ClusterError):
    """An optional dependency is missing."""

    def __init__(self, package, extra):
        super().__init__(f"{package} is not installed: pip install 'tflite-cluster[{extra}]'")
        self.package = package
        self.extra = extra


class VelaError(InputFileError):
    """Arm's Vela compiler failed on a model (the message names the model and Vela's reason)."""
