"""QuarkConfig: every field documented and validated, and one parser for --set and notebook parameters."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

import quarklab as ql
from quarklab.config import SECTIONS, QuarkConfig, check_field, describe, expected, parse_field, preset


def test_every_field_is_documented_with_what_it_accepts():
    text = describe()
    for f in fields(QuarkConfig):
        assert f.metadata["doc"], f.name
        assert f"\n{f.name} = {f.default!r}  (" in "\n" + text
    assert "quantile_scope = 'local'  (one of 'local', 'global')" in text
    assert "top_p = 0.9  (a number in (0, 1])" in text
    assert "max_train_rows = None  (an integer >= 1, or None)" in text
    proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "train", "--help-config"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == text


def test_presets():
    assert preset("tldr-gptj").samples_per_prompt == 96 and preset("tldr-gptj").trainable_fraction == 0.3
    with pytest.raises(ql.QuarkError, match="unknown preset"):
        preset("huge")
    for name in ql.PRESETS:
        assert QuarkConfig.from_dict(preset(name).to_dict()) == preset(name)


def test_the_one_consumer_gpu_preset_is_what_its_comment_says():
    """tldr-gpt2 (config.py's comment): GPT-2 fully fine-tuned in bf16 at lr 2e-5 against OpenAssistant's DeBERTa RM
    on CarperAI's TL;DR, K=5 local quantiles, 256 prompts x 16 samples, 32 rows a step."""
    c = preset("tldr-gpt2")
    assert QuarkConfig.from_dict(c.to_dict()) == c
    assert (c.policy, c.reward, c.dataset) == ("gpt2", "OpenAssistant/reward-model-deberta-v3-large-v2",
                                               "CarperAI/openai_summarize_tldr")
    assert (c.reward_template, c.reward_max_length, c.reward_base_model) == ("{post}[SEP]{summary}", 512, None)
    assert (c.lr, c.trainable_fraction, c.dtype, c.reward_dtype) == (2e-5, 1.0, "bfloat16", "bfloat16")
    assert (c.num_quantiles, c.quantile_scope, c.prompts_per_iteration, c.samples_per_prompt) == (5, "local", 256, 16)
    assert (c.batch_size * c.grad_accum, c.epochs_per_iteration, c.max_new_tokens) == (32, 2, 64)
    assert (c.train_split, c.eval_split, c.strip_prompts, c.kl_coef) == ("train", "valid", True, 0.05)
    assert 1e-5 <= c.lr <= 5e-5 and c.lr < preset("tiny").lr


BAD = [  # (field, value, what the message must say the field accepts)
    ("top_p", 0, r"a number in \(0, 1\], got 0$"),
    ("top_p", 1.5, r"in \(0, 1\], got 1.5"),
    ("temperature", 0.0, "> 0"),
    ("max_new_tokens", 0, "an integer >= 1"),
    ("eval_max_new_tokens", 0, "an integer >= 1"),
    ("sample_batch_size", 0, ">= 1"),
    ("batch_size", 0, ">= 1"),
    ("eval_batch_size", 0, ">= 1"),
    ("grad_accum", 0, ">= 1"),
    ("warmup_ratio", 1.0, r"in \[0, 1\)"),
    ("warmup_ratio", -0.1, r"in \[0, 1\)"),
    ("weight_decay", -1e-3, ">= 0"),
    ("grad_clip", 0, "> 0"),
    ("lr", 0, "> 0"),
    ("lr", float("nan"), "> 0, got nan"),
    ("eval_prompts", 0, ">= 1"),
    ("eval_sampled_n", -1, ">= 0"),
    ("top_k", -1, ">= 0"),
    ("num_quantiles", 0, ">= 1"),
    ("num_quantiles", 2.5, "an integer"),
    ("num_quantiles", True, "an integer"),
    ("iterations", 0, ">= 1"),
    ("seed", -1, ">= 0"),
    ("keep_checkpoints", 0, ">= 1"),
    ("max_train_rows", 0, ">= 1, or None"),
    ("trainable_fraction", 0, r"in \(0, 1\]"),
    ("kl_coef", -0.1, ">= 0"),
    ("entropy_coef", -0.1, ">= 0"),
    ("quantile_scope", "per-prompt", "one of 'local', 'global'"),
    ("pool_strategy", "ppo", "one of 'alt', 'quark'"),
    ("kl_direction", "forward", r"one of 'policy\|\|ref', 'ref\|\|policy'"),
    ("precision", "int8", "one of 'auto', 'bf16', 'fp16', 'fp32'"),
    ("dtype", "half", "one of 'auto', 'float32'"),
    ("device", "gpu", "'cuda:N'"),
    ("policy", "", "non-empty text"),
    ("policy", None, "non-empty text"),
    ("dataset", 3, "non-empty text"),
    ("reference", "  ", "non-empty text, or None"),
    ("train_targets", "eos", "one of 'sampled', 'alt', got 'eos'"),
    ("strip_prompts", "yes", "true or false"),
]


@pytest.mark.parametrize("name,value,accepts", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_a_bad_field_gives_one_error_naming_it(name, value, accepts):
    with pytest.raises(ql.QuarkError, match=rf"^config: {name} must be .*{accepts}"):
        QuarkConfig(**{name: value})
    with pytest.raises(ql.QuarkError, match=rf"^config: {name} must be"):
        preset("tiny").replace(**{name: value})


def test_good_edge_values_are_accepted_and_numbers_normalised():
    config = QuarkConfig(top_p=1, temperature=1e-3, warmup_ratio=0, weight_decay=0, top_k=0, eval_sampled_n=0,
                         max_train_rows=1, reference="ref", device="cuda:1", dtype="bf16", lr=1)
    assert config.top_p == 1.0 and isinstance(config.top_p, float) and isinstance(config.lr, float)
    assert QuarkConfig.from_dict(config.to_dict()) == config


def test_local_quantiles_need_as_many_samples_per_prompt_as_quantiles():
    with pytest.raises(ql.QuarkError, match=r"samples_per_prompt \(3\) must be >= num_quantiles \(5\) with "
                                            r"quantile_scope='local'.*quantile_scope='global'"):
        QuarkConfig(samples_per_prompt=3, num_quantiles=5)
    assert QuarkConfig(samples_per_prompt=3, num_quantiles=5, quantile_scope="global").samples_per_prompt == 3
    assert QuarkConfig(samples_per_prompt=5, num_quantiles=5).num_quantiles == 5


def test_unknown_fields_are_named():
    with pytest.raises(ql.QuarkError, match=r"unknown field\(s\) \['num_quantile'\]"):
        QuarkConfig.from_dict({"num_quantile": 3})


def test_overrides_are_read_by_the_field_type():
    config = preset("tiny").with_overrides(["kl_direction=ref||policy", "num_quantiles=3", "lr=3e-4", "top_p=1",
                                            'quantile_scope="global"', "reference=null", "policy=some/folder",
                                            "max_train_rows=None", "samples_per_prompt= 8"])
    assert (config.kl_direction, config.num_quantiles, config.lr, config.top_p, config.quantile_scope) == \
        ("ref||policy", 3, 3e-4, 1.0, "global")
    assert config.reference is None and config.policy == "some/folder" and config.samples_per_prompt == 8
    assert preset("tiny").with_overrides(["reference=sft/folder"]).reference == "sft/folder"
    for item, message in [("num_quantiles=abc", r"--set: num_quantiles must be an integer >= 1, got 'abc'"),
                          ("num_quantiles=2.5", r"num_quantiles must be an integer >= 1, got '2.5'"),
                          ("top_p=0", r"--set: top_p must be a number in \(0, 1\], got '0'"),
                          ("lr=fast", r"lr must be a number > 0, got 'fast'"),
                          ("quantile_scope=per-prompt", r"quantile_scope must be one of 'local', 'global', got "
                                                        r"'per-prompt'"),
                          ("policy=", r"policy must be non-empty text, got ''"),
                          ("num_quantiles", r"expected key=value"),
                          ("num_quantile=3", r"expected key=value with key one of")]:
        with pytest.raises(ql.QuarkError, match=message):
            preset("tiny").with_overrides([item])


def test_one_parser_for_fields():
    assert parse_field("seed", "7") == 7 and parse_field("temperature", "1") == 1.0
    assert parse_field("device", "cpu") == "cpu" and parse_field("reference", "None") is None
    assert check_field("num_quantiles", 3) == 3
    with pytest.raises(ql.QuarkError, match=r"^-p: num_quantiles must be an integer >= 1, got '0'"):
        parse_field("num_quantiles", "0", where="-p")
    with pytest.raises(ql.QuarkError, match="unknown field 'k'"):
        parse_field("k", "3")


def test_cli_set_errors_are_one_line_naming_the_field(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "train", "--run-dir", str(tmp_path / "run"),
                           "--set", "top_p=0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "quarklab: error: --set: top_p must be a number in (0, 1], got '0'"
    assert not (tmp_path / "run").exists()  # nothing written for a bad config


def test_the_class_docstring_holds_every_field_with_its_doc_by_section():
    doc = " ".join(QuarkConfig.__doc__.split())  # the docs are wrapped there: compare with whitespace collapsed
    for f in fields(QuarkConfig):
        assert f"{f.name} = {f.default!r} ({' '.join(expected(f.name).split())})" in doc, f.name
        assert f.metadata["doc"] in doc, f.name
    titles = [doc.index(f"{t} {'-' * len(t)}") for t in SECTIONS]  # each title, underlined
    assert titles == sorted(titles)  # in the fields' order
    sampling = describe().split("\nSampling: each iteration's pool (exploration)\n")[1].split("\nTraining\n")[0]
    for name in ("samples_per_prompt", "temperature", "top_p", "top_k", "max_new_tokens", "sample_batch_size",
                 "sampler", "vllm_gpu_memory_utilization"):
        assert f"\n{name} = " in sampling, name


def test_presets_are_configs_and_preset_gives_a_changed_copy():
    assert all(isinstance(c, QuarkConfig) for c in ql.PRESETS.values())
    tiny = preset("tiny", lr=0.5)
    assert tiny.lr == 0.5 and ql.PRESETS["tiny"].lr == 1e-3 and tiny.iterations == ql.PRESETS["tiny"].iterations
    tiny.iterations = 99  # a copy: the preset itself is untouched
    assert preset("tiny").iterations == 3
    with pytest.raises(ql.QuarkError, match="unknown field"):
        preset("tiny", bogus=1)


def test_check_field_names_a_value_by_the_name_it_was_given_under():
    with pytest.raises(ql.QuarkError, match=r"^sampling: n \(samples per prompt\) must be an integer >= 1, got 0$"):
        check_field("samples_per_prompt", 0, where="sampling", called="n (samples per prompt)")


def test_reward_precision_defaults_and_what_a_run_written_before_it_reads_back(tmp_path):
    from quarklab import runs

    assert QuarkConfig().reward_precision == "float32" and preset("tldr-gptj").reward_precision == "float16"
    assert "reward_precision = 'float32'  (one of 'float64', 'float32', 'float16')" in describe()
    runs.write_config(tmp_path, preset("tiny"))
    assert runs.read_config(tmp_path).reward_precision == "float32"
    old = preset("tiny").to_dict()
    del old["reward_precision"]  # a config.json from before issue 18: its scores were used as computed
    (tmp_path / "config.json").write_text(__import__("json").dumps(old))
    assert runs.read_config(tmp_path).reward_precision == "float64"
    with pytest.raises(ql.QuarkError, match="reward_precision.*one of 'float64', 'float32', 'float16'"):
        preset("tiny", reward_precision="bfloat16")


def test_alts_prompts_and_training_targets_are_options_the_alt_preset_takes():
    """Stripped prompts and ALT's training targets: off by default (as every run before them trained), on in the
    preset that is ALT's run."""
    assert (QuarkConfig().strip_prompts, QuarkConfig().train_targets) == (False, "sampled")
    assert (preset("tiny").strip_prompts, preset("tiny").train_targets) == (False, "sampled")
    assert (preset("tldr-gptj").strip_prompts, preset("tldr-gptj").train_targets) == (True, "alt")
    data = describe().split("\nQuantiles and pool\n")[0]  # the first section
    training = describe().split("\nTraining\n")[1].split("\nEvaluation: prompts and sampling\n")[0]
    assert "\nstrip_prompts = False  (true or false)" in data and "\ntrain_targets = 'sampled'  (one of" in training
    config = preset("tiny").with_overrides(["strip_prompts=true", "train_targets=alt"])
    assert (config.strip_prompts, config.train_targets) == (True, "alt")
    old = preset("tldr-gptj").to_dict()
    del old["strip_prompts"], old["train_targets"]  # a config.json written before the fields existed
    stored = QuarkConfig.from_stored(old)
    assert (stored.strip_prompts, stored.train_targets) == (False, "sampled")


# ------------------------------------------------------------------ run config files (quarklab train --config)

def test_a_run_config_file_sets_its_fields_over_the_base_and_set_goes_on_top(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("# my run\nnum_quantiles: 3\nlr: 1e-4\nquantile_scope: global\nreference: None\n"
                         "kl_direction: ref||policy\ntop_p: 1\ngradient_checkpointing: yes\nmax_train_rows: null\n")
    config = QuarkConfig.from_file(yaml_file, preset("tiny"))
    assert (config.num_quantiles, config.lr, config.quantile_scope, config.kl_direction) == (3, 1e-4, "global",
                                                                                             "ref||policy")
    assert config.reference is None and config.top_p == 1.0 and isinstance(config.top_p, float)  # YAML's text 1e-4
    assert config.gradient_checkpointing is True and config.max_train_rows is None  # read as --set reads it
    assert config.iterations == preset("tiny").iterations  # what the file leaves out is the base's
    assert QuarkConfig.from_file(yaml_file).iterations == QuarkConfig().iterations  # no base: the defaults
    on_top = QuarkConfig.from_file(yaml_file, preset("tiny"), ["lr=0.5", "num_quantiles=4"])
    assert (on_top.lr, on_top.num_quantiles, on_top.quantile_scope) == (0.5, 4, "global")
    json_file = tmp_path / "run.json"
    json_file.write_text('{"num_quantiles": 3, "lr": 0.0001, "quantile_scope": "global", "reference": null, '
                         '"kl_direction": "ref||policy", "top_p": 1, "gradient_checkpointing": true}')
    assert QuarkConfig.from_file(json_file, preset("tiny")) == config
    (tmp_path / "empty.yaml").write_text("# nothing set\n")
    assert QuarkConfig.from_file(tmp_path / "empty.yaml", preset("tiny")) == preset("tiny")
    with pytest.raises(ql.QuarkError, match=r"config file '.*gone.yaml' does not exist \(quarklab train "
                                            r"--print-config > run.yaml starts one\)$"):
        QuarkConfig.from_file(tmp_path / "gone.yaml")


def test_the_rules_between_fields_are_checked_once_on_the_file_and_set_together(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("num_quantiles: 20\n")  # more quantiles than tiny's 16 samples per prompt ...
    with pytest.raises(ql.QuarkError, match=r"samples_per_prompt \(16\) must be >= num_quantiles \(20\).*"
                                            rf"\(the config of {path}\)$"):
        QuarkConfig.from_file(path, preset("tiny"))
    assert QuarkConfig.from_file(path, preset("tiny"), ["samples_per_prompt=20"]).num_quantiles == 20  # ... fixed


BAD_FILES = [  # (file name, text, the one error it gives: {path} is the file)
    ("run.yaml", "num_quantile: 3\nlr: 1e-4\n", r"config file '{path}': unknown field 'num_quantile' \(did you mean "
                                                r"'num_quantiles'\?\): see quarklab train --help-config$"),
    ("run.json", '{"lrr": 1, "zzz": 2}', r"unknown fields 'lrr' \(did you mean 'lr'\?\), 'zzz': see"),
    ("run.yaml", "top_p: 0\n", r"^{path}: top_p must be a number in \(0, 1\], got 0$"),
    ("run.yaml", "lr: fast\n", r"^{path}: lr must be a number > 0, got 'fast'$"),
    ("run.yaml", "num_quantiles: 2.5\n", r"^{path}: num_quantiles must be an integer >= 1, got 2.5$"),
    ("run.yaml", "quantile_scope: per-prompt\n", r"^{path}: quantile_scope must be one of 'local', 'global'"),
    ("run.yaml", "policy: [a, b]\n", r"^{path}: policy must be non-empty text, got \['a', 'b'\]$"),
    ("run.yaml", "- lr\n- 1e-4\n", r"config file '{path}' must hold a mapping of field: value, got a list$"),
    ("run.yaml", "lr: 1e-4\n  bad: indent\n", r"config file '{path}' is not valid YAML: .* at line 2, column 6$"),
    ("run.json", '{"lr": 1e-4,}', r"config file '{path}' is not valid JSON: .* at line 1, column 13$"),
    ("run.toml", "lr = 1e-4\n", r"config file '{path}': a run config is a .yaml, .yml or .json file$"),
]


@pytest.mark.parametrize("name,text,message", BAD_FILES, ids=[m[:30] for _, _, m in BAD_FILES])
def test_a_bad_config_file_gives_one_error_naming_the_file_and_the_problem(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    import re

    with pytest.raises(ql.QuarkError, match=message.replace("{path}", re.escape(str(path)))):
        QuarkConfig.from_file(path, preset("tiny"))


@pytest.mark.parametrize("name", sorted(ql.PRESETS))
def test_a_printed_config_read_back_is_the_same_config(tmp_path, name):
    changed = preset(name, reward_template='Post: {post}\n"Summary": {summary} é', lr=3e-7, max_train_rows=7,
                     policy="yes", seed=12)  # a multi-line text, an exponent, YAML's words for true
    for config in (preset(name), changed):
        text = config.to_yaml("a header\nof two lines")
        assert text.startswith("# a header\n# of two lines\n\n# --- Models and data\npolicy: ")
        path = tmp_path / "printed.yaml"
        path.write_text(text)
        assert QuarkConfig.from_file(path, QuarkConfig()) == config  # every field is in the file, whatever the base
    assert "\nlr: 3.0e-07  # a number > 0\n" in text and "\nreference: null  # non-empty text, or null\n" in text
