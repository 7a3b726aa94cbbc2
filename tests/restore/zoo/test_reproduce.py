"""Retraining a model folder from its training.json: every stage's recipe, to the same weights, resumable."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from restore.zoo import reproduce, train
from tests.restore.zoo.test_train import SMALL


def test_a_two_stage_model_is_retrained_to_identical_weights_and_a_rerun_skips_finished_stages(tmp_path, caplog, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert train.main([*SMALL, "--seed", "3", "--out", str(first)]) == 0
    assert train.main([*SMALL, "--seed", "4", "--steps", "2", "--lr", "5e-4", "--relation-words", "--motion-compare",
                       "--init", str(first), "--out", str(second)]) == 0
    work = tmp_path / "work"
    assert reproduce.main(["--model", str(second), "--work-dir", str(work), "--threads", "1"]) == 0
    capsys.readouterr()
    a, b = load_file(str(second / "model.safetensors")), load_file(str(work / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((work / "model" / "training.json").read_text())
    assert record["args"]["init"] == str(work / "stage1") and record["args"]["lr"] == 5e-4
    assert record["init"]["args"]["seed"] == 3 and [e["step"] for e in record["log"]] == [1, 2]

    caplog.set_level(logging.INFO)
    assert reproduce.main(["--model", str(second), "--work-dir", str(work), "--threads", "1"]) == 0
    assert sum("finished, skipped" in r.getMessage() for r in caplog.records) == 2
    assert f"{len(a)} of {len(a)} tensors identical" in capsys.readouterr().out


def test_a_difference_from_the_reference_is_reported(tmp_path):
    ref, other = tmp_path / "ref", tmp_path / "other"
    assert train.main([*SMALL, "--out", str(ref)]) == 0
    tensors = load_file(str(ref / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    other.mkdir()
    save_file(tensors, str(other / "model.safetensors"))
    result = reproduce.compare(ref, other)
    assert result["identical"] == result["tensors"] - 1 and result["max_abs_diff"] == pytest.approx(0.5)


def test_a_folder_without_a_recipe_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--model", str(tmp_path), "--work-dir", str(tmp_path / "w")])
    assert f"{tmp_path}: no training.json" in capsys.readouterr().err


def test_an_interrupted_stage_stops_the_run_with_status_130_and_says_how_to_continue(tmp_path, monkeypatch, capsys):
    ref = tmp_path / "ref"
    assert train.main([*SMALL, "--out", str(ref)]) == 0
    monkeypatch.setattr(train, "main", lambda argv: 130)  # what train.main returns after a Ctrl-C
    assert reproduce.main(["--model", str(ref), "--work-dir", str(tmp_path / "w")]) == 130
    assert "run the same command again" in capsys.readouterr().out
