"""``df.recreate_error_locally``: a failed call runs again here, with its cluster inputs,
and raises its own exception in the user's own frame (``%debug`` lands there)."""

from __future__ import annotations

import pytest

import dynflow as df


class Rejected(Exception):
    """An exception whose ``__init__`` does not take back its ``args``."""

    def __init__(self, msg, code, *, detail):
        super().__init__(msg)
        self.code, self.detail = code, detail


@df.task
def numbers(n):
    return list(range(n))


@df.task(task_run_name="acct-{x}")
def check(x, limit):
    if x >= limit:
        raise Rejected(f"{x} over {limit}", x, detail="limit")
    return x


@df.task
def total(xs):
    return sum(xs)


@df.flow
def pipeline(n, limit):
    return total(check.map(numbers(n), limit))


@df.task
def explode(values):
    big = max(values)
    raise ValueError(f"no {big}")


@df.task
def upto(x):
    return list(range(x + 1))


@df.flow
def per_account(x):
    return explode(upto(x))


@df.flow
def accounts(n):
    return total(per_account.map(numbers(n)))


def _raised(fn, *args, **kwargs):
    """The exception ``fn`` raises, and the innermost frame of its traceback."""
    with pytest.raises(BaseException) as info:
        fn(*args, **kwargs)
    tb = info.value.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return info.value, tb.tb_frame


def test_a_failed_map_item_raises_here_with_its_inputs(client):
    error, _ = _raised(pipeline, 6, 4)
    assert isinstance(error, df.MapItemError) and error.failed == [4, 5]
    again, frame = _raised(df.recreate_error_locally, error)
    assert type(again) is Rejected and (again.code, again.detail) == (4, "limit")
    # the user's own frame, with the item's inputs: what %debug / pdb.pm() shows
    assert frame.f_code.co_name == "check" and frame.f_locals == {"x": 4, "limit": 4}
    again, frame = _raised(df.recreate_error_locally, error, index=5)
    assert frame.f_locals["x"] == 5


def test_a_failed_run_future_and_an_item_that_passes_here(client):
    (fut,) = df.submit(pipeline.build(6, 4))
    again, frame = _raised(df.recreate_error_locally, fut, index=5)
    assert type(again) is Rejected and frame.f_locals["x"] == 5
    # an item that did not fail: its value (nothing to recreate)
    assert df.recreate_error_locally(fut, index=1) == 1


def test_a_failed_plain_task(client):
    error, _ = _raised(explode(numbers(3)).compute)
    assert type(error) is ValueError
    again, frame = _raised(df.recreate_error_locally, error)
    assert type(again) is ValueError and str(again) == "no 2"
    assert frame.f_code.co_name == "explode" and frame.f_locals["values"] == [0, 1, 2]


def test_an_item_of_a_flow_mapped_per_item_runs_its_sub_flow_here(client):
    error, _ = _raised(accounts, 3)
    assert isinstance(error, df.MapItemError)
    again, frame = _raised(df.recreate_error_locally, error, index=2)
    assert type(again) is ValueError and str(again) == "no 2"
    assert frame.f_code.co_name == "explode" and frame.f_locals["big"] == 2


def test_an_error_that_is_not_dynflows_is_refused(client):
    with pytest.raises(TypeError, match="expected an error raised in this process by a dynflow"):
        df.recreate_error_locally(ValueError("mine"))
    # the error pickles without the graph it came from (it holds nothing then)
    try:
        pipeline(3, 1)
    except df.MapItemError as e:
        import pickle

        copy = pickle.loads(pickle.dumps(e))
        with pytest.raises(TypeError, match="expected an error raised in this process"):
            df.recreate_error_locally(copy)


def test_a_sync_mode_map_item_is_recreated_and_a_plain_task_is_refused_clearly():
    error, _ = _raised(df.compute, pipeline.build(6, 5), scheduler="sync")
    again, frame = _raised(df.recreate_error_locally, error)
    assert type(again) is Rejected and frame.f_locals == {"x": 5, "limit": 5}
    error, _ = _raised(df.compute, explode(numbers(3)), scheduler="sync")
    with pytest.raises(TypeError, match="with scheduler='sync' it was raised here already"):
        df.recreate_error_locally(error)
