import pytest

from edgeq.cli import main


def test_demo_prints_the_per_layer_table(capsys, mobilenet_v2_state_dict):
    assert main(["demo", "--worst", "3"]) == 0
    out = capsys.readouterr().out
    assert "53 weight tensors" in out
    assert "int8/channel: median" in out


def test_unknown_command_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
