"""Typed run configuration, checked at start-up with errors that name the field.

``schema.py``: the frozen dataclasses (one per node of ``conf/``), also Hydra's schema;
``composition.py``: the schema in Hydra's ConfigStore, ``compose`` and ``as_run_config``;
``parse.py``: ``parse_config`` (ranges, choices, arms, rules across nodes); ``sizes.py``: budgets
in bytes; ``executors.py``: "3G+1C"; ``errors.py``: ConfigError and its checks. Nothing here
builds objects (engine/build.py does) or has side effects beyond registering the schema.
"""

from coserve_jax.config.composition import CONF_DIR, as_run_config, compose, register_schema
from coserve_jax.config.errors import BudgetError, ConfigError, NoFeasibleArmError
from coserve_jax.config.executors import format_executors, parse_executors
from coserve_jax.config.parse import parse_config
from coserve_jax.config.schema import (
    ArmConfig,
    BackendConfig,
    HardwareConfig,
    MetricsConfig,
    ModelConfig,
    PlannerConfig,
    ProfilerConfig,
    RunConfig,
    SearchConfig,
    WorkloadConfig,
    ZooEvalConfig,
    ZooOverrides,
)
from coserve_jax.config.sizes import BUDGETS, budget_bytes, budget_field, parse_bytes

__all__ = [
    "BUDGETS", "CONF_DIR", "ArmConfig", "BackendConfig", "BudgetError", "ConfigError", "HardwareConfig",
    "MetricsConfig", "ModelConfig", "NoFeasibleArmError", "PlannerConfig", "ProfilerConfig", "RunConfig", "SearchConfig", "WorkloadConfig",
    "ZooEvalConfig", "ZooOverrides", "as_run_config", "budget_bytes", "budget_field", "compose", "format_executors",
    "parse_bytes", "parse_config", "parse_executors", "register_schema",
]
