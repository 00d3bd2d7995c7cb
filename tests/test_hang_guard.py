"""The subprocess tests' hang guard (tests/conftest.py): outcomes never depend on the machine's
speed, and a child that does hang is stopped and shown where it was."""

import textwrap
import time

import pytest

from tests.conftest import finish, run_python, start_python

HANGING = textwrap.dedent("""
    import time

    def wait_forever():
        print("waiting", flush=True)
        time.sleep(10**6)

    wait_forever()
""")


def test_child_output_and_exit_status_come_back():
    done = run_python(["-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


def test_a_hung_child_is_stopped_and_the_failure_shows_its_stack():
    child = start_python(["-c", HANGING])
    while "waiting" not in child.output()[0]:  # inside wait_forever: no guess at how long startup takes
        assert child.proc.poll() is None, child.output()
        time.sleep(0.01)
    with pytest.raises(pytest.fail.Exception) as failure:
        finish(child, guard_s=0.01)
    message = str(failure.value)
    assert "still ran after 0.01 s" in message and "SIGABRT" in message
    assert "line 6 in wait_forever" in message  # faulthandler's stack of the sleeping thread
    assert child.proc.returncode is not None  # stopped, not left running
