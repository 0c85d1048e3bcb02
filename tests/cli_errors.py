"""The command line's error contract, checked the same way by every test file that provokes one."""

from pyro_vae.cli import main


def user_error(capsys, argv) -> str:
    """Run the CLI in-process and return its one stderr line: exit code 2, one line starting with
    ``pyro-vae: error:``, no traceback."""
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert "Traceback" not in captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("pyro-vae: error: "), lines[0]
    return lines[0]
