"""quarklab.names: "tiny-tldr" resolved in one place, through the registry the tiny world joins on import."""

from pathlib import Path

import quarklab as ql
from quarklab import names


def test_tiny_tldr_is_registered_by_the_world_and_names_its_parts(world):
    assert names.is_named("tiny-tldr") and names.is_named(Path("tiny-tldr"))
    setup = names.lookup("tiny-tldr", progress=False)
    assert setup.policy == world.policy and setup.data_file("test") == world.data_file("test")
    assert ql.resolve_model("tiny-tldr") == world.policy  # the model, the prompts and the reward all go through it
    assert ql.load_prompts("tiny-tldr", "test")["prompt"].tolist() == ql.load_prompts(world.data_file("test"))[
        "prompt"].tolist()
    assert ql.load_reward("tiny-tldr").name == "tiny-tldr"


def test_anything_else_is_not_a_name(tmp_path):
    for spec in ("gpt2", "CarperAI/openai_summarize_tldr_sft", str(tmp_path), None, 3, print):
        assert not names.is_named(spec) and names.lookup(spec) is None
    assert ql.resolve_model("gpt2") == "gpt2"


def test_a_registered_name_answers_everywhere_a_name_is_taken(world, monkeypatch):
    monkeypatch.setitem(names._REGISTRY, "my-world", lambda seed=0, progress=True: world)
    assert ql.resolve_model("my-world") == world.policy
    assert len(ql.load_prompts("my-world", "valid", limit=3)) == 3
