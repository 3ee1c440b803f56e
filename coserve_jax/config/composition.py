"""The config's Hydra side: the schema in Hydra's ConfigStore, composition outside a Hydra app,
and ``as_run_config`` (compose, then ``parse_config``).

The schema is ``schema.py``'s dataclasses, mutable (Hydra cannot set a field of a frozen
dataclass's node) and registered as ``coserve_schema``, which conf/config.yaml lists first in its
defaults: every YAML file and override is composed onto it, so a value of the wrong type or an
unknown key fails while Hydra composes, naming the field (``workload.num_requests=abc``), and
``model.zoo.num_types=64`` needs no ``+``. ``arm_catalog`` entries stay free-form nodes (a
``_target_`` per policy; ``+`` adds a field an entry does not list); ``parse_config`` checks them.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from coserve_jax.config.errors import ConfigError
from coserve_jax.config.parse import parse_config
from coserve_jax.config.schema import RunConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SCHEMA_NAME = "coserve_schema"


def _mutable(cls: type, types: dict[str, Any] | None = None) -> type:
    """``cls``'s fields, types and defaults as a dataclass Hydra can compose onto: not frozen,
    nested config dataclasses likewise; ``types`` replaces a field's type (its default: None)."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        tp = (types or {}).get(f.name, hints[f.name])
        if dataclasses.is_dataclass(tp):
            tp = _mutable(tp)
            spec = dataclasses.field(default_factory=tp)
        elif f.name in (types or {}):
            spec = dataclasses.field(default=None)
        elif f.default_factory is not dataclasses.MISSING:
            spec = dataclasses.field(default_factory=f.default_factory)
        elif f.default is not dataclasses.MISSING:
            spec = dataclasses.field(default=f.default)
        else:
            spec = dataclasses.field(default=MISSING)  # the YAML must set it
        fields.append((f.name, tp, spec))
    return dataclasses.make_dataclass(cls.__name__, fields)


def register_schema() -> None:
    """Put the schema in Hydra's ConfigStore (run.py before Hydra starts; ``compose``)."""
    # The composed tree: RunConfig's nodes, with the arms named (a list of arm_catalog names, or
    # one name) and the catalog they come from.
    schema = _mutable(RunConfig, types={"arms": Any})
    schema = dataclasses.make_dataclass(
        "CoserveConfig", [("arm_catalog", dict[str, Any], dataclasses.field(default_factory=dict)),
                          # python -m coserve_jax.serve and job=cluster (config/serve.py checks it)
                          ("serve", dict[str, Any], dataclasses.field(default_factory=dict)),
                          # job=cluster's grid (+experiment=cluster_scaling; jobs/cluster.py checks it)
                          ("cluster", dict[str, Any], dataclasses.field(default_factory=dict))],
        bases=(schema,))
    ConfigStore.instance().store(name=SCHEMA_NAME, node=schema)


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> DictConfig:
    """Compose the Hydra config outside a Hydra app (API, tests, scripts); a value or key the
    schema rejects is a ConfigError naming the field."""
    if not CONF_DIR.is_dir():
        raise ConfigError(f"config directory not found: {CONF_DIR} (install the project with pip install -e .)")
    register_schema()
    try:
        if GlobalHydra.instance().is_initialized():
            return hydra_compose(config_name=config_name, overrides=list(overrides))
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except ConfigCompositionException as e:
        raise composition_error(e) from None


_TYPE_WORDS = {"Integer": "a whole number", "Float": "a number", "Boolean": "true or false", "String": "text"}


def composition_error(e: Exception) -> ConfigError:
    """A failed composition as a ConfigError naming the field: the ``full_key`` of the OmegaConf
    error that Hydra wraps, and what was wrong with the value."""
    cause: BaseException | None = e
    while cause is not None and not (isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None)):
        cause = cause.__cause__ or cause.__context__
    said = " ".join(str(e).split())
    if cause is None:
        return ConfigError(said)
    what = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
    m = re.fullmatch(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", what)
    node = getattr(cause, "object_type", None)
    if m:
        what = f"must be {_TYPE_WORDS.get(m.group(2), m.group(2).lower())}, got {m.group(1)!r}"
    elif isinstance(cause, ConfigKeyError) and dataclasses.is_dataclass(node):
        what = f"unknown key; known: {sorted(f.name for f in dataclasses.fields(node))}"
    elif said:
        what = said
    return ConfigError(f"{cause.full_key}: {what}")


def as_run_config(cfg: RunConfig | DictConfig | Sequence[str] | None) -> tuple[RunConfig, dict]:
    """The typed config of a RunConfig, a composed DictConfig or a list of Hydra overrides, and
    the composed tree as plain data (a run dir's resolved_config.yaml; empty for a RunConfig)."""
    if isinstance(cfg, RunConfig):
        return cfg, {}
    if cfg is None or (isinstance(cfg, Sequence) and not isinstance(cfg, str)):
        cfg = compose(list(cfg or []))
    resolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    return parse_config(cfg), resolved
