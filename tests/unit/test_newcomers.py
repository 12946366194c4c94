"""The newcomer wave (defense/newcomers.py): a budget for new clients' misses under attack, and
the wave that begins when it runs dry."""

from kalkan.defense.newcomers import NewcomerWave


def test_clients_with_history_never_draw_on_the_budget() -> None:
    wave = NewcomerWave(rate=1.0, burst=2.0, young=60.0)
    assert all(wave.admit(1000, 1100.0 + k * 0.01) for k in range(100))
    assert wave.budget.tokens == 2.0 and not wave.active


def test_a_few_newcomers_pass_and_a_wave_of_them_proves_itself() -> None:
    wave = NewcomerWave(rate=1.0, burst=3.0)
    now = 5000.0
    admitted = [wave.admit(int(now), now) for _ in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    assert wave.active and wave.waves == 1 and wave.refused == 7


def test_readers_from_before_the_wave_read_on_and_later_arrivals_do_not() -> None:
    wave = NewcomerWave(rate=1.0, burst=1.0)
    assert wave.admit(100, 101.0)
    assert not wave.admit(101, 101.2)  # the bucket is dry: the wave begins at 101
    assert wave.admit(99, 102.0)       # first seen before the wave: reads on
    assert wave.admit(100, 130.0)
    assert not wave.admit(101, 102.0)  # first seen in the wave's first second
    assert not wave.admit(120, 125.0)


def test_the_wave_ends_after_a_calm_and_the_budget_is_full_again() -> None:
    wave = NewcomerWave(rate=1.0, burst=2.0, calm=60.0)
    for _ in range(3):
        wave.admit(100, 100.5)
    assert wave.active
    assert not wave.admit(150, 150.0)  # still in the wave: the calm restarts
    assert wave.admit(215, 215.0) and not wave.active
    assert wave.admit(215, 215.1)
    assert not wave.admit(215, 215.2)


def test_a_wave_begins_when_the_surge_of_arrivals_that_brought_it_began() -> None:
    wave = NewcomerWave(rate=1.0, burst=1.0)
    for t in range(100, 110):
        wave.tick(float(t), 2)         # readers arrive, two a second
    wave.tick(110.0, 300)              # the botnet's identities arrive
    wave.tick(111.0, 250)
    assert wave.admit(105, 111.5)      # a reader, first seen before the surge
    assert not wave.admit(110, 111.6)  # the bucket is dry: the wave began at 109
    assert wave.wave_since == 109
    assert wave.admit(108, 112.0)      # a reader from before the surge reads on
    assert not wave.admit(110, 112.0)  # a bot from the surge's first second does not


def test_without_a_surge_the_wave_begins_when_the_budget_runs_dry() -> None:
    wave = NewcomerWave(rate=1.0, burst=1.0)
    for t in range(100, 110):
        wave.tick(float(t), 3)
    assert wave.admit(109, 109.5)
    assert not wave.admit(109, 109.6)
    assert wave.wave_since == 109 and wave.surge_since is None
