"""Tests of the learning-rate schedules, against hand-computed formulas."""

import math

import hypothesis
import pytest
from hypothesis import strategies as st

from drytorch.lib.schedulers import (
    AbstractScheduler,
    ConstantScheduler,
    CosineScheduler,
    ExponentialScheduler,
    PolynomialScheduler,
    RestartScheduler,
    StepScheduler,
    WarmupScheduler,
)

BASE = 0.1


@pytest.mark.parametrize('epoch', [0, 1, 7, 10_000])
def test_constant(epoch: int) -> None:
    assert ConstantScheduler()(BASE, epoch) == BASE


@pytest.mark.parametrize('epoch', [0, 1, 5, 40])
def test_exponential(epoch: int) -> None:
    scheduler = ExponentialScheduler(exp_decay=0.9, min_decay=0.2)
    expected = BASE * (0.2 + 0.8 * 0.9**epoch)
    assert scheduler(BASE, epoch) == pytest.approx(expected, rel=1e-12)


def test_exponential_defaults_decay_to_zero() -> None:
    scheduler = ExponentialScheduler()
    assert scheduler(BASE, 0) == BASE
    assert scheduler(BASE, 3) == pytest.approx(BASE * 0.975**3)


@pytest.mark.parametrize(
    ('epoch', 'factor'),
    [(0, 1.0), (5, 0.5), (10, 0.0), (25, 0.0)],
)
def test_cosine_key_points(epoch: int, factor: float) -> None:
    scheduler = CosineScheduler(decay_steps=10, min_decay=0.1)
    expected = BASE * (0.1 + 0.9 * factor)
    assert scheduler(BASE, epoch) == pytest.approx(expected, abs=1e-15)


def test_cosine_formula() -> None:
    scheduler = CosineScheduler(decay_steps=8, min_decay=0.01)
    progress = (1 + math.cos(math.pi * 3 / 8)) / 2
    expected = BASE * (0.01 + 0.99 * progress)
    assert scheduler(BASE, 3) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize('epoch', [0, 1, 50, 99, 100, 150])
def test_polynomial(epoch: int) -> None:
    scheduler = PolynomialScheduler(max_epochs=100, power=2.0, min_decay=0.1)
    left = 1 - min(epoch, 100) / 100
    expected = BASE * (0.1 + 0.9 * left**2)
    assert scheduler(BASE, epoch) == pytest.approx(expected, rel=1e-12)


def test_polynomial_defaults_are_linear() -> None:
    scheduler = PolynomialScheduler()
    assert scheduler(BASE, 250) == pytest.approx(BASE * 0.75)
    assert scheduler(BASE, 1000) == 0.0


@pytest.mark.parametrize(
    ('epoch', 'exponent'),
    [(0, 0), (2, 0), (3, 1), (4, 1), (6, 2), (1000, 2)],
)
def test_step(epoch: int, exponent: int) -> None:
    scheduler = StepScheduler(milestones=[3, 6], gamma=0.5)
    assert scheduler(BASE, epoch) == BASE * 0.5**exponent


def test_step_milestones_become_a_tuple() -> None:
    milestones = [1, 2]
    scheduler = StepScheduler(milestones)
    milestones.append(0)
    assert scheduler.milestones == (1, 2)
    assert hash(scheduler) == hash(StepScheduler((1, 2)))


def test_warmup_ramps_to_the_base_schedule_then_follows_it() -> None:
    base = ExponentialScheduler(exp_decay=0.5)
    scheduler = base.with_warmup(3)
    assert scheduler == WarmupScheduler(base, 3)
    ramp = [scheduler(BASE, epoch) for epoch in range(3)]
    assert ramp == pytest.approx([BASE / 4, BASE / 2, BASE * 3 / 4])
    for epoch in range(3, 10):
        assert scheduler(BASE, epoch) == base(BASE, epoch - 3)


def test_zero_warmup_is_the_base_schedule() -> None:
    base = CosineScheduler(decay_steps=7)
    scheduler = base.with_warmup(0)
    assert all(scheduler(BASE, e) == base(BASE, e) for e in range(20))


def test_restart_scales_each_cycle() -> None:
    base = PolynomialScheduler(max_epochs=4)
    scheduler = base.with_restart(4, 0.5)
    assert scheduler == RestartScheduler(base, 4, 0.5)
    for epoch in range(20):
        cycle, position = divmod(epoch, 4)
        expected = 0.5**cycle * base(BASE, position)
        assert scheduler(BASE, epoch) == pytest.approx(expected, rel=1e-12)
    assert scheduler(BASE, 8) == BASE * 0.25


def test_restart_of_a_warmup_warms_up_at_each_restart() -> None:
    scheduler = ConstantScheduler().with_warmup(1).with_restart(3)
    values = [scheduler(1.0, epoch) for epoch in range(6)]
    assert values == [0.5, 1.0, 1.0, 0.5, 1.0, 1.0]


ALL_SCHEDULERS = [
    ConstantScheduler(),
    ExponentialScheduler(),
    CosineScheduler(),
    PolynomialScheduler(),
    StepScheduler([1]),
    ConstantScheduler().with_warmup(2),
    ConstantScheduler().with_restart(2),
]


@pytest.mark.parametrize('scheduler', ALL_SCHEDULERS, ids=repr)
def test_negative_epoch_names_the_value(scheduler: AbstractScheduler) -> None:
    with pytest.raises(ValueError, match=r'epoch must be >= 0.*got -3\.'):
        scheduler(BASE, -3)


@pytest.mark.parametrize('epoch', [1.5, '2', True, None])
def test_non_integer_epoch(epoch: object) -> None:
    with pytest.raises(TypeError, match='epoch must be an integer'):
        ConstantScheduler()(BASE, epoch)  # type: ignore[arg-type]


@pytest.mark.parametrize('base_lr', [-0.1, math.inf, math.nan])
def test_bad_base_lr(base_lr: float) -> None:
    with pytest.raises(ValueError, match='base_lr must be finite and >= 0'):
        CosineScheduler()(base_lr, 1)


def test_numpy_integers_are_epochs() -> None:
    numpy = pytest.importorskip('numpy')
    assert StepScheduler([2])(1.0, numpy.int64(2)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ('make', 'match'),
    [
        (lambda: ExponentialScheduler(exp_decay=0.0), r'exp_decay .*got 0\.0'),
        (lambda: ExponentialScheduler(exp_decay=1.5), r'\(0, 1\]; got 1\.5'),
        (lambda: ExponentialScheduler(min_decay=-1), r'min_decay .*got -1'),
        (lambda: CosineScheduler(decay_steps=0), r'decay_steps .*got 0\.'),
        (lambda: CosineScheduler(min_decay=2.0), r'min_decay .*got 2\.0'),
        (lambda: PolynomialScheduler(max_epochs=-5), r'max_epochs .*got -5'),
        (lambda: PolynomialScheduler(power=0), r'power must be > 0; got 0'),
        (lambda: StepScheduler([]), 'milestones is empty'),
        (lambda: StepScheduler([2, 2]), r'increasing; got 2 after 2'),
        (lambda: StepScheduler([5, 1]), r'increasing; got 1 after 5'),
        (lambda: StepScheduler([-1]), r'each milestone .*got -1'),
        (lambda: StepScheduler([1], gamma=0), r'gamma .*got 0'),
        (
            lambda: ConstantScheduler().with_warmup(-1),
            r'warmup_steps must be an integer >= 0; got -1',
        ),
        (
            lambda: ConstantScheduler().with_restart(0),
            r'restart_interval must be an integer >= 1; got 0',
        ),
        (
            lambda: ConstantScheduler().with_restart(3, 1.1),
            r'restart_fraction must be in \(0, 1\]; got 1\.1',
        ),
        (lambda: CosineScheduler(min_decay=math.nan), r'got nan'),
    ],
)
def test_bad_constructor_arguments(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ('make', 'match'),
    [
        (lambda: CosineScheduler(decay_steps=2.5), 'decay_steps must be an'),
        (lambda: StepScheduler(3), 'milestones must be a sequence'),
        (lambda: StepScheduler([1.0]), 'each milestone must be an integer'),
        (lambda: ExponentialScheduler(exp_decay='0.9'), 'exp_decay must be'),
        (lambda: WarmupScheduler(0.1), 'base must be a scheduler'),
        (lambda: RestartScheduler(None, 3), 'base must be a scheduler'),
    ],
)
def test_wrong_types(make, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        make()


def test_schedulers_are_frozen() -> None:
    scheduler = CosineScheduler()
    with pytest.raises(AttributeError):
        scheduler.decay_steps = 3  # type: ignore[misc]


def _fraction(low_open: bool) -> st.SearchStrategy[float]:
    low = 1e-6 if low_open else 0.0
    return st.floats(low, 1.0, allow_nan=False)


SIMPLE = st.one_of(
    st.just(ConstantScheduler()),
    st.builds(ExponentialScheduler, _fraction(True), _fraction(False)),
    st.builds(CosineScheduler, st.integers(1, 20_000), _fraction(False)),
    st.builds(
        PolynomialScheduler,
        st.integers(1, 20_000),
        st.floats(1e-3, 10.0),
        _fraction(False),
    ),
    st.builds(
        StepScheduler,
        st.lists(st.integers(0, 12_000), min_size=1, unique=True).map(sorted),
        _fraction(True),
    ),
)
SCHEDULERS = st.recursive(
    SIMPLE,
    lambda inner: st.one_of(
        st.builds(WarmupScheduler, inner, st.integers(0, 500)),
        st.builds(
            RestartScheduler, inner, st.integers(1, 500), _fraction(True)
        ),
    ),
    max_leaves=4,
)


@hypothesis.given(
    scheduler=SCHEDULERS,
    base_lr=st.floats(0.0, 10.0),
    epoch=st.integers(0, 10_000),
)
def test_every_rate_is_finite_and_within_base(
    scheduler: AbstractScheduler, base_lr: float, epoch: int
) -> None:
    value = scheduler(base_lr, epoch)
    assert math.isfinite(value)
    assert 0.0 <= value <= base_lr


@hypothesis.given(
    scheduler=SCHEDULERS,
    warmup=st.integers(1, 100),
    epoch=st.integers(0, 10_000),
)
def test_warmup_never_exceeds_the_base_schedule(
    scheduler: AbstractScheduler, warmup: int, epoch: int
) -> None:
    warmed = scheduler.with_warmup(warmup)
    base_value = scheduler(1.0, max(0, epoch - warmup))
    assert warmed(1.0, epoch) <= base_value


def test_drytorch_transformations_compose_picklable_schedules() -> None:
    import pickle

    from drytorch.lib import schedulers as s

    cosine = s.CosineScheduler(10)
    composed = s.warmup(2)(s.rescale(0.5)(s.restart(5, 0.5)(cosine)))
    assert composed == s.WarmupScheduler(
        s.RescaleScheduler(s.RestartScheduler(cosine, 5, 0.5), 0.5), 2
    )
    assert composed(0.1, 2) == pytest.approx(0.5 * cosine(0.1, 0))
    assert composed(0.1, 2 + 5) == pytest.approx(0.5 * cosine(0.05, 0))
    assert pickle.loads(pickle.dumps(composed)) == composed
    with pytest.raises(ValueError, match='factor'):
        s.rescale(0.0)
    with pytest.raises(ValueError, match='warmup_steps'):
        s.warmup(-1)
