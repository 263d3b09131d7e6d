"""Config: the ``BACKBONES`` node, its defaults, and what a config learns from its weights (input
settings, architecture, the file behind the address)."""

from .defaults import OPTIMIZERS, add_backbones_config
from .input_settings import (
    INPUT_FROM_WEIGHTS,
    INPUT_KEYS,
    InputSettingsError,
    WeightsArchitectureError,
    apply_input_settings,
    architecture_conflicts,
    check_architecture,
    config_origins,
    input_settings_of,
    read_ahead,
    weights_source,
)
from .weights_file import WeightsUnavailableError, fetch_weights, weights_cache_path

__all__ = [
    "INPUT_FROM_WEIGHTS",
    "INPUT_KEYS",
    "OPTIMIZERS",
    "InputSettingsError",
    "WeightsArchitectureError",
    "WeightsUnavailableError",
    "add_backbones_config",
    "apply_input_settings",
    "architecture_conflicts",
    "check_architecture",
    "config_origins",
    "fetch_weights",
    "input_settings_of",
    "read_ahead",
    "weights_cache_path",
    "weights_source",
]
