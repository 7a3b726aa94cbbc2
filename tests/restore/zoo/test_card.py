"""The model card: the recipe's flags, the pending-retrain note, and how prompts are read."""

import json
import shutil

from restore.hub import DEFAULT_MODEL_DIR
from restore.zoo import card

RESULT = {"accuracy": {"count": 0.95, "relation": 0.5}, "caption_f1": 0.91, "average": 0.79}


def folder_with(tmp_path, args: dict, init: dict | None = None):
    shutil.copy(DEFAULT_MODEL_DIR / "config.json", tmp_path / "config.json")
    log = [{"step": 1, "lm": 1.0, "patch": 1.0, "seconds": 60.0}]
    record = {"args": args, "log": log, **({"init": init} if init else {})}
    (tmp_path / "training.json").write_text(json.dumps(record))
    return tmp_path


def test_card_of_weights_older_than_the_recipe_options_says_a_retrain_is_pending(tmp_path):
    # the first shipped weights: the first stage of today's
    first = card.stages(json.loads((DEFAULT_MODEL_DIR / "training.json").read_text()))[0]["args"]
    text = card.render_card(folder_with(tmp_path, first), RESULT, 4321, 100)
    assert "a retrain with them is pending" in text and "`--relation-weight`" in text and "`--count-look`" in text
    assert "1. `python -m restore.zoo.train --init OLD_WEIGHTS" in text
    assert "2. `python -m restore.zoo.train --init STAGE2" in text and "5. `python -m restore.zoo.train --init STAGE5" in text
    assert text.count("--count-look") == 6 and text.count("--count-high") == 4 and text.count("--count-weight 2") == 2
    assert text.count("--count-balance 2") == 1 and "6. `python -m restore.zoo.train --init STAGE6" in text
    assert "| What is in this picture? | `describe the image .` |" in text
    assert "--device" not in text.split("## Training")[1].split("\n\n")[0]  # run-only flags are not the recipe
    assert "relation 0.50 (target 0.90)" in text and "count" not in text.split("Below the project's target")[1]


def test_card_of_a_v2_run_names_the_options_it_used(tmp_path):
    v2 = {"seed": 0, "steps": 10, "relation_weight": 1.0, "tally_weight": 0.5, "kind_weights": "count=2",
          "curriculum": 0, "blank_share": 0.0, "shape": "", "device": "cuda", "out": "/x", "resume": True,
          "checkpoint_dir": "/ckpt", "threads": 1, "relation_words": False, "motion_compare": False, "count_look": False,
          "count_high": 0.0, "count_balance": 0.0}
    text = card.render_card(folder_with(tmp_path, v2), RESULT, 4321, 100)
    assert "pending" not in text
    assert "compare" not in text and "column and row order" in text and "tallies" in text
    assert "scenes of 2-3 shapes" not in text  # curriculum 0: off
    flags = card.recipe_flags(v2)
    assert flags == "--seed 0 --steps 10 --relation-weight 1.0 --tally-weight 0.5 --kind-weights count=2 " \
                    "--curriculum 0 --blank-share 0.0 --count-high 0.0 --count-balance 0.0"
    assert "on this machine's CUDA" in " ".join(text.split())


def test_card_of_a_staged_run_gives_every_stage_and_the_total_time(tmp_path):
    first = {"seed": 0, "steps": 3600, "lr": 0.0015, "device": "cpu", "out": "/tmp/a"}
    second = {"seed": 1, "steps": 2000, "init": "/tmp/a", "relation_words": True, "motion_compare": True,
              "relation_weight": 1.0, "device": "cpu", "out": "/tmp/b", "resume": False}
    text = card.render_card(folder_with(tmp_path, second, {"args": first, "steps": 3600, "seconds": 4500.0}),
                            RESULT, 4321, 100)
    assert "In 2 stages" in text
    assert "1. `python -m restore.zoo.train --seed 0 --steps 3600 --lr 0.0015 --out STAGE1`" in text
    assert ("2. `python -m restore.zoo.train --seed 1 --steps 2000 --init STAGE1 --relation-words --motion-compare "
            "--relation-weight 1.0 --out STAGE2`") in text
    assert "3600 + 1 steps in 75 + 1 min (76 min)" in " ".join(text.split())
    assert "relation word" in text and "ends from where it starts" in text
