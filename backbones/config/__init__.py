"""Config: the ``BACKBONES`` node, its defaults, and the input settings that follow the weights."""

from .defaults import OPTIMIZERS, add_backbones_config
from .input_settings import (
    INPUT_FROM_WEIGHTS,
    INPUT_KEYS,
    InputSettingsError,
    apply_input_settings,
    config_origins,
    input_settings_of,
    weights_source,
)

__all__ = [
    "INPUT_FROM_WEIGHTS",
    "INPUT_KEYS",
    "OPTIMIZERS",
    "InputSettingsError",
    "add_backbones_config",
    "apply_input_settings",
    "config_origins",
    "input_settings_of",
    "weights_source",
]
