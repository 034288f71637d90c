"""cache_backends/_s3_ranges.py ``Turns``: large blobs come down one at a time, in the
order their fetches were asked for; a ticket ended early (a small blob, a failure, a
cancelled fetch) lets the next one go at once, and ending one twice changes nothing."""

from __future__ import annotations

import threading
import time

from dockyard.cache_backends._s3_ranges import Turns


def run_in_turn(turns: Turns, ticket: int, log: list[int]) -> threading.Thread:
    def go() -> None:
        turns.wait(ticket)
        log.append(ticket)
        turns.end(ticket)
    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_turns_go_in_ticket_order_whatever_order_the_threads_start() -> None:
    turns, log = Turns(), []
    tickets = [turns.ticket() for _ in range(5)]
    threads = [run_in_turn(turns, ticket, log) for ticket in reversed(tickets)]
    for thread in threads:
        thread.join(10)
    assert log == tickets


def test_an_ended_ticket_lets_the_next_go_and_ending_twice_is_harmless() -> None:
    turns, log = Turns(), []
    first, second, third = turns.ticket(), turns.ticket(), turns.ticket()
    waiting = run_in_turn(turns, third, log)
    time.sleep(0.05)
    assert log == []  # two older tickets still open
    turns.end(second)  # a small blob: done without its turn
    turns.end(second)
    time.sleep(0.05)
    assert log == []  # the first is still open
    turns.end(first)
    waiting.join(10)
    assert log == [third]
    turns.end(first)
    assert repr(turns) == "<Turns serving=3 issued=3>"
