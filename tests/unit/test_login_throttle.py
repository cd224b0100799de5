"""The failed-login throttle: tries counted before the check, per address and per user name."""

from __future__ import annotations

from master_service.auth.throttle import MAX_KEYS, LoginThrottle


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tries_in_flight_count_so_parallel_guesses_cannot_slip_past_the_limit() -> None:
    throttle = LoginThrottle(Clock(), per_address=5, per_user=10)
    # Ten tries arrive before any password check has finished: only five may go on.
    allowed = [throttle.attempt("10.0.0.9", "alice") is None for _ in range(10)]
    assert allowed == [True] * 5 + [False] * 5


def test_the_wait_ends_with_the_window_and_a_good_password_takes_back_only_its_try() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock, per_address=3, per_user=10, window_s=300)
    for _ in range(2):
        assert throttle.attempt("10.0.0.9", "mallory") is None  # two wrong guesses
    assert throttle.attempt("10.0.0.9", "eve") is None
    throttle.succeeded("10.0.0.9", "eve")  # eve's own account: her try is taken back...
    assert throttle.attempt("10.0.0.9", "mallory") is None
    wait = throttle.attempt("10.0.0.9", "mallory")  # ...but the guesses still count
    assert wait is not None
    assert 299 < wait <= 300
    clock.now += 301
    assert throttle.attempt("10.0.0.9", "mallory") is None


def test_one_user_is_guarded_across_addresses() -> None:
    throttle = LoginThrottle(Clock(), per_address=5, per_user=3)
    for n in range(3):
        assert throttle.attempt(f"10.0.0.{n}", "admin") is None
    assert throttle.attempt("10.0.0.99", "admin") is not None
    assert throttle.attempt("10.0.0.99", "bob") is None  # other names are not held up


def test_memory_stays_bounded_and_long_names_share_one_key() -> None:
    throttle = LoginThrottle(Clock(), per_address=1_000_000, per_user=2)
    for n in range(MAX_KEYS + 500):
        throttle.attempt(f"addr-{n}", "x" * 4000 + str(n))
    assert len(throttle._tries) <= MAX_KEYS
    # Names longer than any user's are one key: they cannot each get their own tries.
    assert throttle.attempt("addr-new", "y" * 4000) is not None
