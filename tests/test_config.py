"""Recipes: typed, strict, and every error names the file and the offending key."""

from pathlib import Path

import pytest
import yaml

from mpdistill.errors import ConfigError
from mpdistill.run.recipe import Recipe, dump_recipe, load_recipe, recipe_from_dict
from mpdistill.tasks.prompts import DEFAULT_REWRITE_PROMPT
from mpdistill.tasks import chain

EMBEDDED = Path(__file__).resolve().parents[1] / "mpdistill" / "recipes" / "embedded.yaml"

# A math recipe with its defaults: the task's multi-line rewrite instruction, sent as a chat message.
MATH = recipe_from_dict({"task": "math", "data": {"train": "openai/gsm8k", "config": "main"}, "student": "s", "teacher": "t"})


def config_error(path) -> str:
    """Load a recipe that must be refused; return the ConfigError's message."""
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    return str(info.value)


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_embedded_recipe_loads_with_its_values():
    recipe = load_recipe(EMBEDDED)
    assert isinstance(recipe, Recipe)
    assert recipe.method == "mpd"
    assert recipe.task == "chain"
    assert (recipe.student, recipe.teacher) == ("embedded:student", "embedded:teacher")
    # Every value written in the file arrives in the recipe, section by section.
    raw = yaml.safe_load(EMBEDDED.read_text(encoding="utf-8"))
    for key, value in raw.items():
        if isinstance(value, dict):
            section = getattr(recipe, key)
            for sub, v in value.items():
                assert getattr(section, sub) == v, f"{key}.{sub}"
        else:
            assert getattr(recipe, key) == value, key
    # The embedded teacher's rewrite layout, not the default natural-language prompt.
    assert recipe.rewrite.prompt_template == "{problem}rewrite:\n{trace}\nshort:\n"
    assert recipe.rewrite.use_chat_template is False


def test_defaults_are_not_shared_between_recipes():
    first = Recipe()
    first.training.steps = 7
    assert Recipe().training.steps == 40


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, "method: mpd\nmethd: opd\n")
    assert f"{path}: methd: unknown key" in config_error(path)


def test_unknown_nested_key_is_named_with_its_section(tmp_path):
    path = write(tmp_path, "training:\n  steps: 3\n  stpes: 4\n")
    message = config_error(path)
    assert "training.stpes: unknown key" in message
    assert str(path) in message
    # The valid sibling is not reported.
    assert "training.steps" not in message


def test_every_error_is_reported_at_once(tmp_path):
    path = write(tmp_path, "foo: 1\neval:\n  nn: 3\n")
    lines = config_error(path).splitlines()
    assert f"{path}: foo: unknown key" in lines
    assert f"{path}: eval.nn: unknown key" in lines


@pytest.mark.parametrize(
    "text, key, detail",
    [
        ("training:\n  steps: ten\n", "training.steps", "(got 'ten')"),
        ("training:\n  steps: 0\n", "training.steps", "greater than 0"),
        ("training:\n  beta: 2.0\n", "training.beta", "less than or equal to 1"),
        ("training:\n  beta: -0.1\n", "training.beta", "greater than or equal to 0"),
        ("rewrite:\n  on_reject: maybe\n", "rewrite.on_reject", "(got 'maybe')"),
        ("method: distill\n", "method", "(got 'distill')"),
        ("data:\n  prompt_style: fancy\n", "data.prompt_style", "(got 'fancy')"),
        ("rewrite:\n  max_ratio: 1.5\n", "rewrite.max_ratio", "less than or equal to 1"),
        ("training: 5\n", "training", "(got 5)"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(tmp_path, text, key, detail):
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}: {key}: "), message
    assert detail in message


def test_rewrite_template_must_keep_the_trace(tmp_path):
    path = write(tmp_path, "rewrite:\n  prompt_template: 'Shorten this: {problem}'\n")
    message = config_error(path)
    assert "rewrite.prompt_template" in message
    assert "must contain one of {trace}" in message


def test_rewrite_template_must_keep_the_problem():
    with pytest.raises(ConfigError, match=r"rewrite\.prompt_template: .*must contain \{problem\}"):
        recipe_from_dict({"rewrite": {"prompt_template": "just {trace}"}})


def test_rewrite_template_with_both_fields_is_accepted():
    recipe = recipe_from_dict({"rewrite": {"prompt_template": "P {problem} T {trace}"}})
    assert recipe.rewrite.prompt_template == "P {problem} T {trace}"
    # Absent: the task's (the embedded chain task's layout; the math task's instruction).
    assert Recipe().rewrite.prompt_template == chain.REWRITE_PROMPT and Recipe().rewrite.use_chat_template is False
    assert MATH.rewrite.prompt_template == DEFAULT_REWRITE_PROMPT and MATH.rewrite.use_chat_template is True


def test_assignment_is_validated_too():
    recipe = Recipe()
    with pytest.raises(ValueError):
        recipe.training.beta = 3.0
    assert recipe.training.beta == 0.5


def test_missing_recipe_file(tmp_path):
    missing = tmp_path / "nope" / "recipe.yaml"
    with pytest.raises(ConfigError) as info:
        load_recipe(missing)
    assert str(info.value) == f"recipe not found: {missing}"


def test_a_folder_is_not_a_recipe(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path)


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "training: [1, 2\nmethod: mpd\n")
    assert config_error(path).startswith(f"{path}: not valid YAML")


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- method\n- mpd\n")
    assert config_error(path) == f"{path}: expected a mapping at the top level, got list"


def test_empty_file_gives_the_defaults(tmp_path):
    assert load_recipe(write(tmp_path, "")) == Recipe()


def test_recipe_from_dict_uses_its_source_name():
    with pytest.raises(ConfigError) as info:
        recipe_from_dict({"seed": "abc"}, source="cli")
    assert str(info.value).startswith("cli: seed: ")


def test_dump_recipe_round_trips(tmp_path):
    original = load_recipe(EMBEDDED).model_copy(update={"method": "opd", "seed": 17})
    text = dump_recipe(original)
    assert yaml.safe_load(text)["method"] == "opd"
    again = load_recipe(write(tmp_path, text))
    assert again == original
    assert again.rewrite.prompt_template == original.rewrite.prompt_template


def test_dump_of_defaults_round_trips_including_the_default_template(tmp_path):
    # The default rewrite template is multi-line: YAML must keep it byte for byte.
    again = load_recipe(write(tmp_path, dump_recipe(MATH)))
    assert again == MATH
    assert again.rewrite.prompt_template == DEFAULT_REWRITE_PROMPT


def test_overrides_merge_into_nested_sections(tmp_path):
    path = write(tmp_path, "seed: 3\ntraining:\n  steps: 12\n  batch_size: 4\nrewrite:\n  max_ratio: 0.5\n")
    recipe = load_recipe(path, {"training": {"steps": 2}, "eval": {"n": 8}, "method": "opd"})
    assert recipe.training.steps == 2
    assert recipe.training.batch_size == 4  # sibling from the file survives
    assert recipe.eval.n == 8
    assert recipe.eval.batch_size == 250  # default sibling survives
    assert recipe.rewrite.max_ratio == 0.5  # untouched section survives
    assert (recipe.method, recipe.seed) == ("opd", 3)


def test_overrides_do_not_touch_the_file(tmp_path):
    text = "training:\n  steps: 12\n"
    path = write(tmp_path, text)
    load_recipe(path, {"training": {"steps": 2}})
    assert path.read_text(encoding="utf-8") == text
    assert load_recipe(path).training.steps == 12


def test_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError, match=r"training\.stpes: unknown key"):
        load_recipe(path, {"training": {"stpes": 2}})


def test_overrides_on_a_non_mapping_recipe_give_config_error(tmp_path):
    path = write(tmp_path, "- method\n- mpd\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_recipe(path, {"seed": 1})


def test_overrides_into_a_scalar_section_give_config_error(tmp_path):
    path = write(tmp_path, "training: 5\n")
    with pytest.raises(ConfigError, match="training"):
        load_recipe(path, {"training": {"steps": 2}})


def test_every_training_key_reaches_an_mpdconfig_field_by_one_rule():
    """pipeline.training_arguments passes each training: key to the MPDConfig field of its name (or
    TRL_NAMES's): a new key without such a field must be mapped, not silently refused at run time."""
    from dataclasses import fields

    from mpdistill.run.recipe import NOT_ONE_FIELD, TRL_NAMES, TrainingConfig
    from mpdistill.trainers.config import MPDConfig

    names = {f.name for f in fields(MPDConfig)}
    keys = {TRL_NAMES.get(k, k) for k in TrainingConfig.model_fields if k not in NOT_ONE_FIELD}
    assert keys <= names, sorted(keys - names)
