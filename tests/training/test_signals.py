"""SIGTERM and Ctrl-C noted between steps, the previous handlers back afterwards."""

import os
import signal
import time

import pytest

from pconv_jax.training.signals import CtrlC, Sigterm


def test_sigterm_is_noted_instead_of_killing_the_process():
    previous = signal.getsignal(signal.SIGTERM)
    with Sigterm() as sigterm:
        assert not sigterm.received
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert sigterm.received
    assert signal.getsignal(signal.SIGTERM) == previous


def test_ctrl_c_is_acted_on_between_steps_and_a_second_one_at_once():
    with CtrlC() as ctrl_c:
        ctrl_c.check(1)
        os.kill(os.getpid(), signal.SIGINT)  # noted, not raised where the main thread is
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check(2)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: Python's own handler again
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
