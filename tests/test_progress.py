"""Progress bars (tqdm): quiet when disabled, the final count shown, stderr only."""

import io

import pytest

from hesse._progress import Progress, message


def test_disabled_writes_nothing_but_counts():
    stream = io.StringIO()
    with Progress(10, "work", enabled=False, stream=stream) as bar:
        bar.update(3, info="x")
    assert stream.getvalue() == "" and bar.count == 3


@pytest.mark.parametrize("steps, total, shown", [(10, 10, "10/10"), (15, 600, "15/15"), (4, None, "4")])
def test_final_count_shown(steps, total, shown):
    # an iteration that converges early (15 of a 600-product budget) ends as a full bar, "done"
    stream = io.StringIO()
    with Progress(total, "eigsh", stream=stream) as bar:
        for _ in range(steps):
            bar.update(1, info="restart 0")
    last = stream.getvalue().rstrip().split("\r")[-1]
    assert last.startswith("eigsh") and shown in last
    assert ("done" in last) is (total is not None and steps < total)


def test_message_goes_to_stderr_unless_quiet(capsys):
    message("hello", enabled=True)
    message("hidden", enabled=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "hello\n"
