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


class DivergenceError(FloatingPointError):
    """A training whose loss or weights stopped being finite, stopped before anything non-finite
    was applied or saved.

    Attributes:
        iteration: the iteration at which it was found.
        what: what is not finite, e.g. ``loss_box_reg = nan (rank 1)``.
        lr: the learning rate of that iteration (``None`` if unknown).
        last_checkpoint: the newest checkpoint saved, all finite (``None``: none yet).
    """

    # Every process of a training finds it at the same iteration: one of them says it.
    said_by_main_process = True

    def __init__(
        self,
        iteration: int,
        what: str,
        *,
        lr: float | None = None,
        last_checkpoint: str | None = None,
    ) -> None:
        self.iteration, self.what, self.lr = iteration, what, lr
        self.last_checkpoint = last_checkpoint
        super().__init__(iteration, what, lr, last_checkpoint)

    def __str__(self) -> str:
        lr = f" at LR {self.lr:.4g}" if self.lr is not None else ""
        if self.last_checkpoint:
            resume = (
                f"The last good checkpoint is {self.last_checkpoint}; --resume continues from it"
            )
        else:
            resume = "No checkpoint was saved before it, so a new run starts from the beginning"
        return (
            f"training diverged at iteration {self.iteration}{lr}: {self.what}. {resume} "
            "(lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS or set "
            "SOLVER.CLIP_GRADIENTS.ENABLED True first; docs/troubleshooting.md)"
        )


class StoppedBySignal(RuntimeError):
    """A training stopped by a signal (a scheduler's SIGTERM) after writing a checkpoint of the
    iteration it had finished; ``--resume`` continues from that checkpoint."""

    # Every process of a training stops at the same iteration: one of them says it.
    said_by_main_process = True

    def __init__(self, signal_name: str, iteration: int, checkpoint: str) -> None:
        self.signal_name, self.iteration, self.checkpoint = signal_name, iteration, checkpoint
        super().__init__(signal_name, iteration, checkpoint)

    def __str__(self) -> str:
        return (
            f"stopped by {self.signal_name} after iteration {self.iteration}: wrote "
            f"{self.checkpoint}; --resume continues from it"
        )
