"""The `restore` command line."""

import json

from jobs.cli import main
from tests.helpers.images import make_image


def test_methods_lists_every_registered_method(capsys):
    from restore.methods import available

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [m.name for m in available()]
    assert any("in-LLM (layer 2 of 32)" in line for line in lines if line.startswith("fastv"))


def test_run_answers_one_request(tmp_path, capsys):
    image = tmp_path / "img.png"
    make_image(0).save(image)
    code = main(["run", "--image", str(image), "--prompt", "<image> what is this ?", "--model", "random:llava-tiny",
                 "--method", "visionzip", "--budget", "9", "--max-new-tokens", "3"])
    assert code == 0
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("{") :])
    assert stats["visual_tokens"] == 36 and stats["kept_tokens"] == 9 and stats["restore"] is True


def test_bad_input_is_an_error_message_not_a_traceback(tmp_path, capsys):
    assert main(["run", "--image", str(tmp_path / "none.png"), "--prompt", "<image> hi", "--model", "random:llava-tiny"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["run", "--image", "x.png", "--prompt", "hi", "--model", "random:llava-tiny", "--method", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
