"""A signal whose handler's exception Python drops is sent again: real processes, signalled inside a
weakref callback (where Python reports an exception to sys.unraisablehook and goes on)."""

import pytest
import signalled_in_a_weakref_callback

pytestmark = pytest.mark.slow  # fresh Python processes

HANDLER = """
    from triplet_tfx.components.signals import ResentWhenDropped

    class Stop(Exception):
        pass

    def handler(number, _frame):
        resent.received(number)
        raise Stop

    signal.signal(signal.SIGUSR1, handler)
    resent = ResentWhenDropped((Stop,))
"""
UNRELATED_DROP = """
    unrelated = Thing()
    weakref_to_unrelated = weakref.ref(unrelated, lambda _ref: 1 / 0)
    del unrelated  # after the block: reported as Python does
"""


def test_a_dropped_exception_of_a_handler_is_raised_again_by_the_same_signal():
    completed = signalled_in_a_weakref_callback.run(HANDLER, "resent", "SIGUSR1", "Stop", after=UNRELATED_DROP)
    assert completed.stdout == "stopped\n", completed.stderr
    assert "Exception ignored in: <function signalled_inside" not in completed.stderr
    assert "ZeroDivisionError" in completed.stderr  # the previous hook is back


def test_without_it_python_drops_the_exception_and_goes_on():
    # The reference: what happens to a signal's exception raised inside a weakref callback.
    completed = signalled_in_a_weakref_callback.run(HANDLER, "open(os.devnull)", "SIGUSR1", "Stop", seconds=2)
    assert completed.stdout == "not stopped\n"
    assert "Exception ignored in: <function signalled_inside" in completed.stderr
