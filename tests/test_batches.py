"""collector.web.batches: concurrent asks answered together."""

from __future__ import annotations

import asyncio
import threading

import pytest

from collector.web.batches import Batcher, Busy
from tests.helpers import wait_for


def run(coroutine):
    return asyncio.run(coroutine)


def first_batch_held(answer=lambda item: item):
    """(batches run so far, the event that lets the first one end, the work): the first
    batch runs until released, so that the asks meanwhile wait for the next."""
    batches: list[list[int]] = []
    release = threading.Event()

    def work(items):
        batches.append(list(items))
        if len(batches) == 1:
            release.wait(5)
        return [answer(item) for item in items]

    return batches, release, work


def test_asks_meanwhile_form_the_next_batch_and_get_their_own_answers():
    batches, release, work = first_batch_held(lambda item: item * 10)

    async def main():
        batcher = Batcher()
        first = asyncio.create_task(batcher.ask("g", 1, work))
        await asyncio.sleep(0.05)
        others = [asyncio.create_task(batcher.ask("g", i, work)) for i in range(2, 6)]
        await asyncio.sleep(0.05)
        release.set()
        return await first, await asyncio.gather(*others)

    assert run(main()) == (10, [20, 30, 40, 50])
    assert batches == [[1], [2, 3, 4, 5]]


def test_the_last_batchs_clients_asking_again_join_the_next_batch():
    """Clients of a batch ask again once answered, after the asks that came meanwhile
    started the next batch: that batch waits (within ``regather``) until as many asks
    wait as the last one held, instead of running one ask alone."""
    batches, release, work = first_batch_held()

    async def client(batcher, first):
        answer = await batcher.ask("g", first, work)
        return answer, await batcher.ask("g", first + 10, work)  # at once, again

    async def main():
        batcher = Batcher(regather=60)  # ends when enough wait, not by the clock
        clients = [asyncio.create_task(client(batcher, i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.05)
        late = asyncio.create_task(batcher.ask("g", 4, work))
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(*clients), await late

    assert run(main()) == ([(1, 11), (2, 12), (3, 13)], 4)
    assert batches == [[1, 2, 3], [4, 11, 12, 13]]


def test_a_batch_regathers_no_longer_than_regather():
    """Nobody asks again: the waiting ask runs once ``regather`` has passed."""
    batches, release, work = first_batch_held()

    async def main():
        batcher = Batcher(regather=0.01)
        first = [asyncio.create_task(batcher.ask("g", i, work)) for i in (1, 2)]
        await asyncio.sleep(0.05)
        late = asyncio.create_task(batcher.ask("g", 3, work))
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(*first), await late

    assert run(main()) == ([1, 2], 3)
    assert batches == [[1, 2], [3]]


def test_a_batch_holds_at_most_most_asks_and_groups_stay_apart():
    batches: list[tuple[str, list[int]]] = []

    def work_of(group):
        def work(items):
            batches.append((group, list(items)))
            return items
        return work

    async def main():
        batcher = Batcher(most=2)
        asks = [batcher.ask(group, i, work_of(group)) for i in range(5) for group in ("a", "b")]
        return await asyncio.gather(*asks)

    assert run(main()) == [i for i in range(5) for _ in "ab"]
    assert all(len(items) <= 2 for _, items in batches)
    assert sorted(i for group, items in batches if group == "a" for i in items) == list(range(5))


def test_an_error_is_each_asks_of_that_batch_and_the_next_batch_runs():
    calls = []

    def work(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("storage away")
        return items

    async def main():
        batcher = Batcher()
        with pytest.raises(RuntimeError, match="storage away"):
            await batcher.ask("g", 1, work)
        return await batcher.ask("g", 2, work)

    assert run(main()) == 2


def test_a_cancelled_ask_leaves_the_others_answered():
    release = threading.Event()

    def work(items):
        release.wait(5)
        return items

    async def main():
        batcher = Batcher()
        first = asyncio.create_task(batcher.ask("g", 1, work))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(batcher.ask("g", 2, work))
        kept = asyncio.create_task(batcher.ask("g", 3, work))
        await asyncio.sleep(0.01)
        gone.cancel()  # a client that went away while waiting
        release.set()
        return await first, await kept

    assert run(main()) == (1, 3)


def test_asks_past_the_waiting_bound_are_refused_at_once_and_the_rest_answered():
    """A client opening thousands of connections cannot queue unbounded work: past
    ``max_waiting`` asks waiting in a group, an ask is refused (Busy) without waiting."""
    release = threading.Event()

    def work(items):
        release.wait(5)
        return items

    async def main():
        batcher = Batcher(most=2, max_waiting=3)
        first = asyncio.create_task(batcher.ask("g", 0, work))  # running, not waiting
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(batcher.ask("g", i, work)) for i in (1, 2, 3)]
        await asyncio.sleep(0.01)
        with pytest.raises(Busy):
            await batcher.ask("g", 4, work)
        other_group = asyncio.create_task(batcher.ask("h", 5, work))  # its own bound
        release.set()
        return await first, await asyncio.gather(*waiting), await other_group

    assert run(main()) == (0, [1, 2, 3], 5)


async def one_then_another(release: threading.Event, first_work, second_work):
    """Ask 1 (its batch held until ``release``), then 2 while that batch runs; release;
    both asks' tasks once done (or after 5 s)."""
    batcher = Batcher()
    first = asyncio.create_task(batcher.ask("g", 1, first_work))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(batcher.ask("g", 2, second_work))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait([first, second], timeout=5)
    return first, second


def test_each_batch_runs_the_work_of_its_own_asks():
    """The work of an ask closes over its request (the site as it is now): a batch formed
    while an older one runs uses its own asks' work, not the first ask's forever."""
    release = threading.Event()

    def old(items):
        release.wait(5)
        return [("old", item) for item in items]

    def new(items):
        return [("new", item) for item in items]

    first, second = run(one_then_another(release, old, new))
    assert (first.result(), second.result()) == (("old", 1), ("new", 2))


def test_a_wrong_answer_fails_its_batch_and_strands_no_ask():
    """Work answering the wrong number of items fails its batch's asks with an error, and
    the asks queued meanwhile still get their batch."""
    release = threading.Event()
    calls = []

    def work(items):
        calls.append(items)
        if len(calls) == 1:
            release.wait(5)
            return []
        return list(items)

    first, second = run(one_then_another(release, work, work))
    assert first.done() and second.done()
    assert isinstance(first.exception(), RuntimeError) and second.result() == 2


def test_asks_whose_client_left_do_not_count_toward_the_bound():
    release = threading.Event()

    def work(items):
        release.wait(5)
        return list(items)

    async def main():
        batcher = Batcher(max_waiting=4)
        first = asyncio.create_task(batcher.ask("g", 0, work))
        await asyncio.sleep(0.05)
        gone = [asyncio.create_task(batcher.ask("g", i, work)) for i in range(1, 5)]
        await asyncio.sleep(0.01)
        for task in gone:
            task.cancel()
        await asyncio.sleep(0.01)
        kept = asyncio.create_task(batcher.ask("g", 9, work))  # not Busy: nobody waits
        await asyncio.sleep(0.01)
        release.set()
        return await first, await kept

    assert run(main()) == (0, 9)


def test_asks_from_two_event_loops_are_batched_apart():
    """Two loops (two test clients, or one without ``with``: a portal per request) asking
    at once: each is answered in its own loop, neither waits for the other's batch."""
    batcher = Batcher()
    release = threading.Event()
    answers = {}

    def work(items):
        release.wait(5)
        return list(items)

    def in_a_loop(name, item):
        async def main():
            return await asyncio.wait_for(batcher.ask("g", item, work), 10)
        answers[name] = asyncio.run(main())

    first = threading.Thread(target=in_a_loop, args=("a", 1))
    first.start()
    wait_for(lambda: batcher._running)  # noqa: SLF001 - the first loop's batch runs
    second = threading.Thread(target=in_a_loop, args=("b", 2))
    second.start()
    wait_for(lambda: len(batcher._running) == 2)  # noqa: SLF001 - and the second's
    release.set()
    first.join(10)
    second.join(10)
    assert answers == {"a": 1, "b": 2}
