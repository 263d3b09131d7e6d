"""The error raised for a backbone option that is not allowed, naming the option and its choices."""

from __future__ import annotations

from typing import Any, Iterable


class BackboneOptionError(ValueError):
    """An option value the backbone cannot take.

    Attributes:
        option: the constructor argument at fault (the config glue renames it to the cfg key).
        value: the value given.
        allowed: a description of the allowed values.
    """

    def __init__(self, option: str, value: Any, allowed: str, reason: str = "") -> None:
        self.option, self.value, self.allowed, self.reason = option, value, allowed, reason
        super().__init__(self._message())

    def _message(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.option}={self.value!r} is not supported{why}; allowed: {self.allowed}"

    def renamed(self, option: str) -> "BackboneOptionError":
        """The same error naming ``option`` (e.g. a config key) instead."""
        return BackboneOptionError(option, self.value, self.allowed, self.reason)


def check_choice(option: str, value: Any, choices: Iterable[Any], reason: str = "") -> None:
    """Raise :class:`BackboneOptionError` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise BackboneOptionError(option, value, ", ".join(repr(c) for c in choices), reason)
