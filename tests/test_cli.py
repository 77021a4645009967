"""``python jobs/<job>.py --help``: every group and key with its default and its description,
all from the typed config (pipeline/config.py)."""
from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from pipeline import cli, config
from pipeline.config import Config

ROOT = Path(__file__).resolve().parent.parent


def _schemas() -> list[type]:
    """Every dataclass pipeline/config.py defines."""
    return [c for _, c in inspect.getmembers(config, inspect.isclass)
            if dataclasses.is_dataclass(c) and c.__module__ == config.__name__]


def _groups() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Config) if config.is_group(f)]


def test_every_config_field_has_a_one_line_help():
    schemas = _schemas()
    assert Config in schemas and len(schemas) >= 11
    lacking = [f"{c.__name__}.{f.name}" for c in schemas for f in dataclasses.fields(c)
               if not str(f.metadata.get("help", "")).strip()
               or "\n" in f.metadata["help"]]
    assert not lacking, ("fields without metadata={'help': ...} (use config.setting or "
                         f"config.group): {', '.join(lacking)}")
    # Every dataclass is reachable from Config, so --help lists all of them.
    assert {f.default_factory for f in _groups()} | {Config} == set(schemas)


def test_train_help_lists_groups_keys_defaults_and_descriptions():
    proc = subprocess.run([sys.executable, "jobs/train.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("Train PinSage on the latest minibatches")   # the job's docstring
    lines = out.splitlines()
    lr = next(line for line in lines if line.strip().startswith("train.lr="))
    assert lr.split()[0] == "train.lr=0.003" and lr.endswith("peak learning rate (Adam)")
    # Groups with their options, the composed one starred.
    assert "  data=edges|movielens100k*" in out and "  train=default*" in out
    assert re.search(r"  ablate=[\w|]*\bdefault\*", out) and "spark=local*" in out
    for f in _groups():
        assert f"{f.name} ({f.name}=" in out and f.metadata["help"] in out
        for key in dataclasses.fields(f.default_factory):
            name = f"{f.name}.{key.name}="
            at = next(i for i, line in enumerate(lines) if line.strip().startswith(name))
            # the description on the key's line, or on the next one after a long value
            assert key.metadata["help"] in lines[at] + lines[at + 1], name
    # Defaults are the composed ones: conf/data/movielens100k.yaml sets the columns.
    assert "data.src_col=user_id " in out and "data.time_col=timestamp " in out
    assert "run_dir=runs/movielens100k (= runs/${data.name})" in out
    assert "refresh.keep_versions=3 (= ${keep_versions})" in out


def test_help_shows_the_defaults_an_override_composes(make_cfg):
    cfg = make_cfg("data=edges", "train.lr=0.01", "eval.ks=[5,10]", "keep_versions=7")
    text = cli.help_text(cfg, job="evaluate", doc="Evaluate.\n",
                         choices={"data": "edges", "eval": "default"})
    assert text.startswith("Evaluate.\n\nUsage: python jobs/evaluate.py")
    keys = {re.split(r"\s{2,}", line.strip())[0] for line in text.splitlines()}
    assert {"train.lr=0.01", "eval.ks=[5, 10]", "data.name=edges", "data.src_col=src",
            "data.path=null", "keep_versions=7",
            "refresh.keep_versions=7 (= ${keep_versions})"} <= keys
    assert "  data=edges*|movielens100k " in text and "  eval=default* " in text


def test_a_bad_override_is_one_line_naming_it():
    assert cli.override_problem(["train.lr=fast"]) == (
        "Error merging override train.lr=fast; Value 'fast' of type 'str' could not be "
        "converted to Float")
    assert "Key 'nope' not in 'TrainConfig'" in cli.override_problem(["train.nope=1"])
    assert cli.override_problem(["data=nope"]).endswith(
        "Available options in 'data': edges; movielens100k")
    assert cli.override_problem(["eval.ks=[5"]).startswith("cannot parse the overrides eval.ks=[5")
    # Good overrides, Hydra's flags and sweeps are left to Hydra.
    for args in (["ablate=default", "eval.ks=[5,10]", "+ablate.rows.x=['train.lr=0.1']"],
                 ["--help"], ["-m", "train.lr=0.1,0.2"], ["train.lr=0.1,0.2"]):
        assert cli.override_problem(args) is None, args


def test_a_moved_key_runs_under_its_new_name(capsys):
    """Commands written before the split had its own group keep working, with a notice."""
    args = ["data=edges", "eval.protocol=random_edges", "++eval.holdout_fraction=0.2",
            "eval.ks=[5]"]
    assert cli.renamed_keys(args) == ["data=edges", "split.protocol=random_edges",
                                      "++split.holdout_fraction=0.2", "eval.ks=[5]"]
    notes = capsys.readouterr().err.splitlines()
    assert notes == ["note: eval.protocol is now split.protocol; running with "
                     "split.protocol=random_edges",
                     "note: eval.holdout_fraction is now split.holdout_fraction; running with "
                     "split.holdout_fraction=0.2"]
    assert cli.override_problem(cli.renamed_keys(args)) is None
    assert "Key 'protocol' not in 'EvalConfig'" in cli.override_problem(args)
    # Every new name is a key of the config.
    cfg = OmegaConf.structured(Config)
    assert all(OmegaConf.select(cfg, new) is not None for new in config.RENAMED.values())


def test_a_job_reports_a_bad_override_in_one_line_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "jobs/train.py", f"run_dir={tmp_path}",
                           "train.epochs=two"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: train: Error merging override train.epochs=two; Value 'two' of type 'str' could "
        "not be converted to Integer (python jobs/train.py --help lists every group and key)"]
