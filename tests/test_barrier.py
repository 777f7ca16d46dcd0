import asyncio

import pytest

from htsrl_aio.runtime.barrier import BarrierAborted, SwapBarrier


async def test_no_swap_until_every_party_arrives():
    swaps: list[int] = []
    barrier = SwapBarrier(3, on_swap=swaps.append)
    first = asyncio.ensure_future(barrier.wait())
    second = asyncio.ensure_future(barrier.wait())
    for _ in range(5):  # give the waiters every chance to (wrongly) get through
        await asyncio.sleep(0)
    assert swaps == [] and not first.done() and not second.done()
    assert barrier.arrived == 2
    assert await barrier.wait() == 0
    assert await first == 0 and await second == 0
    assert swaps == [0] and barrier.generation == 1


async def test_swap_runs_before_any_party_is_released():
    state = {"swapped": False}
    barrier = SwapBarrier(2, on_swap=lambda g: state.update(swapped=True))

    async def party() -> bool:
        await barrier.wait()
        return state["swapped"]

    assert await asyncio.gather(party(), party()) == [True, True]


async def test_barrier_is_cyclic():
    barrier = SwapBarrier(2)
    for generation in range(4):
        assert await asyncio.gather(barrier.wait(), barrier.wait()) == [generation, generation]


async def test_abort_wakes_waiters_and_refuses_newcomers():
    barrier = SwapBarrier(3)
    waiter = asyncio.ensure_future(barrier.wait())
    await asyncio.sleep(0)
    barrier.abort(RuntimeError("env died"))
    with pytest.raises(BarrierAborted) as info:
        await waiter
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(BarrierAborted):
        await barrier.wait()


async def test_cancelled_party_aborts_instead_of_deadlocking():
    barrier = SwapBarrier(3)
    stays = asyncio.ensure_future(barrier.wait())
    leaves = asyncio.ensure_future(barrier.wait())
    await asyncio.sleep(0)
    leaves.cancel()
    with pytest.raises(BarrierAborted):
        await asyncio.wait_for(stays, timeout=5)


async def test_failing_swap_action_aborts_the_barrier():
    def explode(generation: int) -> None:
        raise ValueError("publish failed")

    barrier = SwapBarrier(2, on_swap=explode)
    results = await asyncio.gather(barrier.wait(), barrier.wait(), return_exceptions=True)
    # The last to arrive ran the swap and raises its error; the other is released with the cause.
    assert isinstance(results[1], ValueError)
    assert isinstance(results[0], BarrierAborted) and isinstance(results[0].__cause__, ValueError)
    assert barrier.generation == 0


@pytest.mark.parametrize("aborted_first", [False, True], ids=["cancelled", "aborted-then-cancelled"])
async def test_a_party_cancelled_during_the_swap_leaves_no_unretrieved_exception(aborted_first):
    # Ctrl-C during a swap checkpoint: the party running on_swap is cancelled; nothing may be left for
    # asyncio to report as "Future exception was never retrieved" after the run's final sentence.
    import gc

    reported: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
    checkpointing = asyncio.Event()

    async def checkpoint(generation: int) -> None:
        checkpointing.set()
        await asyncio.Event().wait()  # a checkpoint write that never ends

    barrier = SwapBarrier(2, on_swap=checkpoint)
    waiting = asyncio.ensure_future(barrier.wait())
    releasing = asyncio.ensure_future(barrier.wait())
    await checkpointing.wait()
    if aborted_first:  # the run stopping: it aborts every barrier, then cancels every party
        barrier.abort()
    releasing.cancel()
    results = await asyncio.gather(waiting, releasing, return_exceptions=True)
    assert isinstance(results[0], BarrierAborted) and isinstance(results[1], asyncio.CancelledError)
    del waiting, releasing, results
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []


@pytest.mark.parametrize("stop", ["cancel", "abort"])
async def test_a_swap_that_fails_after_a_party_left_raises_its_own_failure(stop):
    # A checkpoint fails while another party is cancelled (or the run aborts the barrier): that empties
    # the waiters, and the checkpoint's error, not a consequence of the bookkeeping, must come out.
    import gc

    reported: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
    checkpointing, fail = asyncio.Event(), asyncio.Event()

    async def checkpoint(generation: int) -> None:
        checkpointing.set()
        await fail.wait()
        raise OSError("disk full")

    barrier = SwapBarrier(2, on_swap=checkpoint)
    leaving = asyncio.ensure_future(barrier.wait())
    releasing = asyncio.ensure_future(barrier.wait())
    await checkpointing.wait()
    if stop == "cancel":
        leaving.cancel()
    else:
        barrier.abort()
    await asyncio.gather(leaving, return_exceptions=True)
    fail.set()
    with pytest.raises(OSError, match="disk full"):
        await releasing
    del leaving, releasing
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []
