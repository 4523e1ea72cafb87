"""admission.errors: the one exception tree of the library."""

from __future__ import annotations


class AdmissionError(Exception):
    """AdmissionError is the base of every error the library raises on purpose."""


class ConfigError(AdmissionError, ValueError):
    """ConfigError is a bad setting: its message is one line naming the variable, the value and
    the accepted form, so that start-up can print it and stop."""

    def __init__(self, variable: str, value: object, accepted: str) -> None:
        self.variable = variable
        self.value = value
        self.accepted = accepted
        super().__init__(f"{variable}={value!r} is invalid: expected {accepted}")


class StorageError(AdmissionError):
    """StorageError is a store call that failed: the underlying error is its `__cause__`."""


class StorageTimeout(StorageError):
    """StorageTimeout is a store call that took longer than `ADMISSION_STORAGE_TIMEOUT`."""
