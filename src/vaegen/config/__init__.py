"""Typed run configuration: YAML in, validated objects out (it imports nothing else of vaegen but its errors).

`schema` holds the sections (pydantic models that forbid unknown keys; each field's description is its line in
docs/config.md), `loading` reads YAML and `--set` overrides into a `Config`, and `messages` turns pydantic's
structured errors into one paragraph that names the key path, the value and what is allowed.
"""

from vaegen.config.loading import (  # noqa: F401  (the package's names)
    apply_override, check_key_path, config_from_dict, load_config, load_test_config, read_yaml, set_key_path,
)
from vaegen.config.schema import (  # noqa: F401  (the package's names)
    BACKBONE_NAMES, MODEL_NAMES, NAME_MAX, NETWORK_NAMES, SEED_MAX, AdversarialConfig, BetaConfig, Config,
    DataConfig, DiagnosticsConfig, EvalConfig, InterpolationConfig, LoggingConfig, LossConfig, ModelConfig, OptimConfig,
    OutputConfig, SamplerConfig, Section, TestConfig, TrainConfig, check_extra_backbones,
    evaluation_network_problem, network_of,
)
