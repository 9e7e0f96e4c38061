import pytest
from pydantic import ValidationError

from protocol.config import load_run_config, parse_run_config


@pytest.mark.parametrize("preset", ["demo", "test", "full"])
def test_presets_load(preset):
    config = load_run_config(preset)
    assert config.rollouts.prompts_per_shard <= config.rollouts.batch_groups


def test_unknown_keys_and_bad_values_are_errors():
    with pytest.raises(ValidationError, match="Extra inputs"):
        parse_run_config("[grpo]\nlearning_rate = 0.1\n")
    with pytest.raises(ValidationError, match="group_size"):
        parse_run_config("[rollouts]\ngroup_size = 1\n")
    with pytest.raises(ValidationError, match="temperature"):
        parse_run_config("[sampling]\ntemperature = -1.0\n")
    with pytest.raises(FileNotFoundError, match="presets"):
        load_run_config("no-such-run")


def test_config_round_trips_through_json():
    config = load_run_config("demo")
    assert type(config).model_validate_json(config.model_dump_json()) == config


def test_the_readme_run_file_is_valid():
    from protocol.proto_gen import ROOT

    readme = (ROOT / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    config = parse_run_config(block)
    assert config.name == "my-run" and config.eval.every == 4


def test_a_carried_optimizer_cannot_be_combined_with_the_direction_check():
    with pytest.raises(ValidationError, match="carry_optimizer needs diloco.direction_check = false"):
        parse_run_config("[grpo]\ncarry_optimizer = true\n")
    config = parse_run_config("[grpo]\ncarry_optimizer = true\n[diloco]\ndirection_check = false\n")
    assert config.grpo.carry_optimizer and not config.diloco.direction_check
    assert load_run_config("demo").grpo.carry_optimizer and not load_run_config("test").grpo.carry_optimizer
