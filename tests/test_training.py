"""book_utils.training: the one ``TrainingArguments`` builder (chapter 4a on) and the
mixed-precision choice."""

import pytest

from book_utils.training import mixed_precision_flags, training_arguments


def build(tmp_path, **kwargs):
    kwargs = {"learning_rate": 5e-5, "batch_size": 16, "device": "cpu"} | kwargs
    if "max_steps" not in kwargs:
        kwargs.setdefault("epochs", 1)
    return training_arguments(tmp_path / "run", **kwargs)


def test_learning_rate_and_warmup_are_checked(tmp_path):
    with pytest.raises(ValueError, match="learning_rate"):
        build(tmp_path, learning_rate=3)
    assert build(tmp_path, warmup_steps=0.1).get_warmup_steps(200) == 20  # a ratio
    assert build(tmp_path, warmup_steps=30).get_warmup_steps(200) == 30  # a count
    with pytest.raises(ValueError, match="warmup_steps"):
        build(tmp_path, warmup_steps=1.5)


def test_exactly_one_of_max_steps_and_epochs(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        build(tmp_path, max_steps=10, epochs=1)
    with pytest.raises(ValueError, match="exactly one"):
        training_arguments(tmp_path / "run", learning_rate=5e-5, batch_size=16)
    assert build(tmp_path, max_steps=10).max_steps == 10
    assert build(tmp_path, epochs=2).num_train_epochs == 2


def test_best_metric_evaluates_saves_and_restores_the_best(tmp_path):
    args = build(tmp_path, best_metric="macro_f1")
    assert args.eval_strategy == args.save_strategy == "epoch"
    assert args.load_best_model_at_end and args.metric_for_best_model == "macro_f1"
    assert args.greater_is_better and args.save_total_limit == 1
    steps = build(tmp_path, best_metric="macro_f1", eval_steps=25)
    assert steps.eval_strategy == steps.save_strategy == "steps"
    assert steps.eval_steps == steps.save_steps == 25


def test_no_best_metric_writes_no_checkpoint(tmp_path):
    args = build(tmp_path)
    assert args.save_strategy == "no" and args.eval_strategy == "no"
    assert not args.load_best_model_at_end
    assert build(tmp_path, eval_steps=5).eval_strategy == "steps"


def test_cpu_defaults_and_overrides(tmp_path):
    assert mixed_precision_flags("cpu") == {"bf16": False, "fp16": False}
    args = build(tmp_path, per_device_eval_batch_size=64)
    assert args.use_cpu and not (args.bf16 or args.fp16)
    assert args.per_device_eval_batch_size == 64
    assert args.report_to == [] and not args.remove_unused_columns


def test_config_class_builds_a_trl_sft_config(tmp_path):
    trl = pytest.importorskip("trl")
    config = build(tmp_path, max_steps=4, config_class=trl.SFTConfig)
    assert isinstance(config, trl.SFTConfig) and config.max_steps == 4
