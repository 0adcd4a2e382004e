"""`apiinone run` stops on a second signal that lands while the first one's handler runs (make and the
terminal, or a SIGTERM to the process group, signal it twice at once): once it hung for ever in the
handler, waiting for a lock the interrupted handler held."""

import threading

import pytest

from apiinone.launcher import StopRequest


class SecondSignalInsideSet(threading.Event):
    """An Event whose set() is interrupted, holding its lock, by the same handler again: what CPython does
    when a second signal arrives between the bytecodes of the first handler's ``Event.set()``."""

    def __init__(self, handler_ref: list) -> None:
        super().__init__()
        self.handler_ref = handler_ref

    def set(self) -> None:
        with self._cond:
            self.handler_ref[0](15, None)  # the second SIGTERM's handler, re-entered here
            self._flag = True
            self._cond.notify_all()


def test_a_second_signal_during_the_first_handler_returns_instead_of_deadlocking():
    ref: list = []
    stop = StopRequest()
    stop.stopping = SecondSignalInsideSet(ref)
    stop.supervising = True
    ref.append(stop)
    done = threading.Event()

    def deliver() -> None:
        stop(15, None)
        done.set()

    threading.Thread(target=deliver, daemon=True).start()
    assert done.wait(5), "the handler deadlocked on the stop event's lock"
    assert stop.stopping.is_set() and stop.requested


def test_a_signal_while_starting_abandons_the_start():
    stop = StopRequest()
    with pytest.raises(KeyboardInterrupt):
        stop(2, None)
    stop(2, None)  # the second one does nothing more
    assert stop.stopping.is_set()
