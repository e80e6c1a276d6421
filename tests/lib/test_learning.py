"""Tests of LearningSchema: optimizers, groups, schedules and clipping."""

import math

import pytest
import torch

from drytorch.lib import gradient_ops
from drytorch.lib.learning import LearningSchema
from drytorch.lib.schedulers import (
    ConstantScheduler,
    CosineScheduler,
    ExponentialScheduler,
    StepScheduler,
)


class EncoderDecoder(torch.nn.Module):
    """Two named submodules and a parameter of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
        )
        self.decoder = torch.nn.Linear(2, 4)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(inputs)) * self.scale


def _ids(params) -> list[int]:
    return [id(param) for param in params]


@pytest.mark.parametrize(
    ('schema', 'cls', 'lr', 'defaults'),
    [
        (
            LearningSchema.adam(),
            torch.optim.Adam,
            1e-3,
            {'betas': (0.9, 0.999)},
        ),
        (
            LearningSchema.adam_w(eps=1e-6),
            torch.optim.AdamW,
            1e-3,
            {'betas': (0.9, 0.999), 'weight_decay': 1e-2, 'eps': 1e-6},
        ),
        (
            LearningSchema.sgd(0.5, momentum=0.9, nesterov=True),
            torch.optim.SGD,
            0.5,
            {
                'momentum': 0.9,
                'weight_decay': 0.0,
                'dampening': 0.0,
                'nesterov': True,
            },
        ),
        (
            LearningSchema.r_adam(2e-3, betas=(0.8, 0.99)),
            torch.optim.RAdam,
            2e-3,
            {
                'betas': (0.8, 0.99),
                'weight_decay': 0.0,
                'decoupled_weight_decay': False,
            },
        ),
    ],
    ids=['adam', 'adam_w', 'sgd', 'r_adam'],
)
def test_constructors_build_their_optimizer(
    schema: LearningSchema, cls: type, lr: float, defaults: dict
) -> None:
    module = EncoderDecoder()
    optimizer = schema.build_optimizer(module)
    assert type(optimizer) is cls
    assert schema.optimizer_defaults == defaults
    [group] = optimizer.param_groups
    assert _ids(group['params']) == _ids(module.parameters())
    assert group['lr'] == lr
    assert group['initial_lr'] == lr
    for key, value in defaults.items():
        assert group[key] == value


def test_groups_follow_the_prefixes() -> None:
    module = EncoderDecoder()
    schema = LearningSchema.adam(
        {'decoder': 1e-2, 'encoder': 1e-3, 'encoder.1': 1e-4, '': 1e-5}
    )
    optimizer = schema.build_optimizer(module)
    groups = optimizer.param_groups
    assert [g['lr'] for g in groups] == [1e-2, 1e-3, 1e-4, 1e-5]
    assert [g['initial_lr'] for g in groups] == [1e-2, 1e-3, 1e-4, 1e-5]
    assert _ids(groups[0]['params']) == _ids(module.decoder.parameters())
    assert _ids(groups[1]['params']) == _ids(module.encoder[0].parameters())
    assert _ids(groups[2]['params']) == _ids(module.encoder[1].parameters())
    assert _ids(groups[3]['params']) == [id(module.scale)]


def test_prefix_matches_whole_names_only() -> None:
    schema = LearningSchema.sgd({'enc': 0.1, '': 0.2})
    with pytest.raises(ValueError, match=r"lr prefix 'enc'.*'decoder'"):
        schema.build_optimizer(EncoderDecoder())


def test_unmatched_prefix_is_named() -> None:
    schema = LearningSchema.adam({'encoder': 1e-3, 'classifier': 1e-2})
    with pytest.raises(
        ValueError, match=r"No parameter of EncoderDecoder .* 'classifier'"
    ):
        schema.build_optimizer(EncoderDecoder())


def test_prefix_emptied_by_longer_prefixes_is_an_error() -> None:
    schema = LearningSchema.adam(
        {'encoder': 1e-3, 'encoder.0': 1e-3, 'encoder.1': 1e-3, '': 1e-3}
    )
    with pytest.raises(ValueError, match="lr prefix 'encoder' "):
        schema.build_optimizer(EncoderDecoder())


def test_parameters_without_a_group_are_named() -> None:
    schema = LearningSchema.adam({'encoder': 1e-3})
    with pytest.raises(
        ValueError,
        match=r'Parameters scale, decoder\.weight, decoder\.bias match',
    ):
        schema.build_optimizer(EncoderDecoder())


def test_unknown_argument_lists_the_valid_ones() -> None:
    with pytest.raises(
        TypeError,
        match=(
            r"^Adam got an unknown argument 'momentm'\. Valid arguments "
            r'\(with defaults\): betas=\(0\.9, 0\.999\), eps=1e-08, '
            r'weight_decay=0, amsgrad=False, .*maximize=False'
        ),
    ):
        LearningSchema.adam(momentm=0.9)


def test_unknown_argument_suggests_a_close_one() -> None:
    with pytest.raises(TypeError, match=r"'momentun'\. Did you mean 'mom"):
        LearningSchema.sgd(momentun=0.9)


def test_unknown_argument_on_direct_construction() -> None:
    with pytest.raises(TypeError, match="RAdam got an unknown argument 'x'"):
        LearningSchema(torch.optim.RAdam, 1e-3, optimizer_defaults={'x': 1})


def test_lr_in_defaults_is_refused() -> None:
    with pytest.raises(ValueError, match='Pass the learning rate as base_lr'):
        LearningSchema(torch.optim.SGD, 0.1, optimizer_defaults={'lr': 0.2})


def test_values_are_checked_by_the_optimizer_at_construction() -> None:
    with pytest.raises(ValueError, match=r'Adam rejected .*betas=\(1\.5'):
        LearningSchema.adam(betas=(1.5, 0.9))
    with pytest.raises(ValueError, match=r'SGD rejected .*Nesterov'):
        LearningSchema.sgd(nesterov=True)


@pytest.mark.parametrize('lr', [0.0, -1e-3, math.inf, math.nan])
def test_lr_must_be_positive_and_finite(lr: float) -> None:
    with pytest.raises(ValueError, match=f'lr must be positive .*got {lr}'):
        LearningSchema.adam(lr)


def test_lr_dict_entries_are_checked() -> None:
    with pytest.raises(ValueError, match=r"lr\['decoder'\] must be .*-1"):
        LearningSchema.adam({'encoder': 1e-3, 'decoder': -1})
    with pytest.raises(ValueError, match='lr dict is empty'):
        LearningSchema.adam({})
    with pytest.raises(TypeError, match='must be submodule names'):
        LearningSchema.adam({1: 1e-3})


@pytest.mark.parametrize('lr', ['0.1', True, None])
def test_lr_must_be_a_number(lr: object) -> None:
    with pytest.raises(TypeError, match='lr must be a positive number'):
        LearningSchema.sgd(lr)  # type: ignore[arg-type]


def test_other_fields_are_checked() -> None:
    with pytest.raises(TypeError, match='optimizer_cls must be'):
        LearningSchema(torch.nn.Linear, 0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='scheduler must be a drytorch'):
        LearningSchema.adam(scheduler=lambda lr, epoch: lr)
    with pytest.raises(ValueError, match=r'threshold must be .*got 0'):
        gradient_ops.GradNormClipper(0)
    with pytest.raises(ValueError, match=r'threshold must .*got -1'):
        gradient_ops.GradValueClipper(-1.0)
    with pytest.raises(TypeError, match='gradient_op must be a callable'):
        LearningSchema.adam(gradient_op=1.0)  # type: ignore[arg-type]


def test_schema_is_frozen_and_owns_its_dicts() -> None:
    lrs = {'encoder': 1e-3, 'decoder': 1e-2}
    defaults = {'momentum': 0.9}
    schema = LearningSchema(torch.optim.SGD, lrs, optimizer_defaults=defaults)
    lrs['encoder'] = 1.0
    defaults['momentum'] = 0.0
    assert schema.base_lr == {'encoder': 1e-3, 'decoder': 1e-2}
    assert schema.optimizer_defaults == {'momentum': 0.9}
    with pytest.raises(AttributeError):
        schema.base_lr = 0.1  # type: ignore[misc]


def test_learning_rates_per_group() -> None:
    schema = LearningSchema.sgd(
        {'encoder': 0.1, '': 0.4}, scheduler=StepScheduler([2], 0.5)
    )
    assert schema.learning_rates(0) == [0.1, 0.4]
    assert schema.learning_rates(2) == [0.05, 0.2]
    assert schema.learning_rates(2, base_lr=0.8) == [0.4, 0.4]
    override = {'': 1.0, 'encoder': 0.2}
    assert schema.learning_rates(2, base_lr=override) == [0.1, 0.5]


def test_learning_rates_reject_mismatched_overrides() -> None:
    grouped = LearningSchema.sgd({'encoder': 0.1, '': 0.4})
    with pytest.raises(ValueError, match=r"keys \['encoder', ''\]"):
        grouped.learning_rates(0, base_lr={'encoder': 0.1})
    single = LearningSchema.sgd(0.1)
    with pytest.raises(ValueError, match='one parameter group'):
        single.learning_rates(0, base_lr={'encoder': 0.1})
    with pytest.raises(ValueError, match='base_lr must be positive'):
        single.learning_rates(0, base_lr=-0.1)


def test_negative_epoch_is_named() -> None:
    schema = LearningSchema.adam(scheduler=CosineScheduler())
    with pytest.raises(ValueError, match=r'epoch must be >= 0.*got -1\.'):
        schema.learning_rates(-1)


def test_apply_learning_rate_sets_every_group() -> None:
    schema = LearningSchema.adam(
        {'encoder': 1e-2, '': 1e-3}, scheduler=ExponentialScheduler(0.5)
    )
    optimizer = schema.build_optimizer(EncoderDecoder())
    schema.apply_learning_rate(optimizer, 3)
    assert [g['lr'] for g in optimizer.param_groups] == [
        1e-2 * 0.125,
        1e-3 * 0.125,
    ]
    assert [g['initial_lr'] for g in optimizer.param_groups] == [1e-2, 1e-3]


def test_apply_learning_rate_refuses_a_foreign_optimizer() -> None:
    schema = LearningSchema.adam({'encoder': 1e-2, '': 1e-3})
    optimizer = torch.optim.Adam(EncoderDecoder().parameters())
    with pytest.raises(ValueError, match=r'1 parameter group.* defines 2'):
        schema.apply_learning_rate(optimizer, 0)


def _train(
    schema: LearningSchema,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: range,
) -> list[list[float]]:
    """A few full-batch steps per epoch; returns the rates used."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8, 4, generator=generator)
    rates = []
    for epoch in epochs:
        schema.apply_learning_rate(optimizer, epoch)
        rates.append([g['lr'] for g in optimizer.param_groups])
        for _ in range(2):
            optimizer.zero_grad()
            loss = (module(inputs) - inputs).pow(2).mean()
            loss.backward()
            schema.clip_gradients(module.parameters())
            optimizer.step()
    return rates


def test_resume_gets_the_rates_and_weights_of_a_continuous_run() -> None:
    schema = LearningSchema.sgd(
        {'encoder': 0.05, '': 0.1},
        momentum=0.9,
        scheduler=CosineScheduler(6).with_warmup(2).with_restart(5, 0.5),
        gradient_op=gradient_ops.GradNormClipper(1.0),
    )
    torch.manual_seed(1)
    continuous = EncoderDecoder()
    start = {k: v.clone() for k, v in continuous.state_dict().items()}
    optimizer = schema.build_optimizer(continuous)
    rates = _train(schema, continuous, optimizer, range(12))

    resumed = EncoderDecoder()
    resumed.load_state_dict(start)
    first = schema.build_optimizer(resumed)
    _train(schema, resumed, first, range(7))
    saved = first.state_dict()
    # A fresh optimizer at epoch 7 gets the continuous run's rates...
    fresh = schema.build_optimizer(resumed)
    schema.apply_learning_rate(fresh, 7)
    assert [g['lr'] for g in fresh.param_groups] == rates[7]
    # ...also after loading a state that holds the previous epoch's rates.
    fresh.load_state_dict(saved)
    later = _train(schema, resumed, fresh, range(7, 12))
    assert later == rates[7:]
    for name, value in continuous.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def _gradients(module: torch.nn.Module, size: float) -> None:
    for index, param in enumerate(module.parameters()):
        param.grad = torch.full_like(param, size * (-1) ** index)


def _total_norm(module: torch.nn.Module) -> torch.Tensor:
    return torch.linalg.vector_norm(
        torch.stack(
            [p.grad.norm() for p in module.parameters() if p.grad is not None]
        )
    )


def test_clip_grad_norm_bounds_the_total_norm() -> None:
    module = EncoderDecoder()
    _gradients(module, 10.0)
    before = _total_norm(module)
    schema = LearningSchema.adam(gradient_op=gradient_ops.GradNormClipper(0.5))
    returned = schema.clip_gradients(module.parameters())
    assert isinstance(returned, torch.Tensor)
    torch.testing.assert_close(returned, before)
    after = _total_norm(module)
    assert after <= 0.5 * (1 + 1e-5)
    assert after == pytest.approx(0.5, rel=1e-4)


def test_clip_grad_norm_leaves_small_gradients() -> None:
    module = EncoderDecoder()
    _gradients(module, 1e-3)
    expected = [p.grad.clone() for p in module.parameters()]
    clipper = gradient_ops.GradNormClipper(100.0)
    LearningSchema.adam(gradient_op=clipper).clip_gradients(
        module.parameters()
    )
    for param, grad in zip(module.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad)


def test_clip_by_value_then_by_norm() -> None:
    module = EncoderDecoder()
    _gradients(module, 3.0)
    module.scale.grad = None  # parameters without gradients are skipped
    gradient_ops.GradValueClipper(0.1)(module.parameters())
    returned = gradient_ops.GradNormClipper(0.2)(module.parameters())
    count = sum(p.numel() for p in module.parameters()) - 1
    torch.testing.assert_close(returned, torch.tensor(0.1 * count**0.5))
    assert _total_norm(module) <= 0.2 * (1 + 1e-5)
    for param in module.parameters():
        if param.grad is not None:
            assert param.grad.abs().max() <= 0.1


def test_clip_grad_value_alone_and_no_clipping() -> None:
    module = EncoderDecoder()
    _gradients(module, 3.0)
    assert LearningSchema.sgd().clip_gradients(module.parameters()) is None
    assert all(p.grad.abs().max() == 3.0 for p in module.parameters())
    schema = LearningSchema.sgd(gradient_op=gradient_ops.GradValueClipper(0.5))
    assert schema.clip_gradients(module.scale) is None
    assert module.scale.grad.abs().max() == 0.5
    assert module.decoder.weight.grad.abs().max() == 3.0


def test_clip_gradients_never_reads_values_back(monkeypatch) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError('host sync')

    module = EncoderDecoder()
    _gradients(module, 10.0)
    ops = [
        gradient_ops.GradValueClipper(2.0),
        gradient_ops.GradNormClipper(1.0),
        gradient_ops.GradParamNormalizer(),
        gradient_ops.GradZScoreNormalizer(),
    ]
    for name in ('item', 'tolist', '__bool__', '__float__'):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for op in ops:
        LearningSchema.adam(gradient_op=op).clip_gradients(module.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_clip_gradients_does_not_synchronize_cuda() -> None:
    module = EncoderDecoder().cuda()
    schema = LearningSchema.adam_w(
        gradient_op=gradient_ops.GradNormClipper(0.5)
    )
    optimizer = schema.build_optimizer(module)
    loss = module(torch.randn(16, 4, device='cuda')).pow(2).sum() * 100
    loss.backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        schema.apply_learning_rate(optimizer, 3)
        norm = schema.clip_gradients(module.parameters())
        optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert norm.device.type == 'cuda'
    assert _total_norm(module) <= 0.5 * (1 + 1e-5)


def test_describe_is_readable() -> None:
    schema = LearningSchema.sgd(
        {'encoder': 0.1, '': 0.2},
        momentum=0.9,
        scheduler=ConstantScheduler().with_warmup(3),
        gradient_op=gradient_ops.GradNormClipper(1.0),
    )
    assert schema.describe() == {
        'optimizer': 'SGD',
        'base_lr': {'encoder': 0.1, '': 0.2},
        'optimizer_defaults': {
            'momentum': 0.9,
            'weight_decay': 0.0,
            'dampening': 0.0,
            'nesterov': False,
        },
        'scheduler': (
            'WarmupScheduler(base=ConstantScheduler(), warmup_steps=3)'
        ),
        'gradient_op': 'GradNormClipper(threshold=1.0)',
    }


def test_constructors_take_drytorch_arguments_in_drytorch_order() -> None:
    """Positional calls written for DRYTorch mean the same here."""
    scheduler = ConstantScheduler().with_warmup(2)
    clip = gradient_ops.GradNormClipper(2.0)
    adam = LearningSchema.adam(0.1, (0.8, 0.9), scheduler, clip)
    assert (adam.optimizer_cls, adam.base_lr) == (torch.optim.Adam, 0.1)
    assert adam.optimizer_defaults == {'betas': (0.8, 0.9)}
    assert (adam.scheduler, adam.gradient_op) == (scheduler, clip)
    adam_w = LearningSchema.adam_w(0.1, (0.8, 0.9), 0.5, scheduler, clip)
    assert adam_w.optimizer_defaults['weight_decay'] == 0.5
    assert adam_w.gradient_op is clip
    sgd = LearningSchema.sgd(0.1, 0.9, 0.01, 0.1, False, scheduler, clip)
    assert sgd.optimizer_defaults == {
        'momentum': 0.9,
        'weight_decay': 0.01,
        'dampening': 0.1,
        'nesterov': False,
    }
    r_adam = LearningSchema.r_adam(0.1, (0.8, 0.9), 0.01, scheduler, clip)
    assert r_adam.optimizer_defaults['decoupled_weight_decay'] is True
    assert (
        LearningSchema.r_adam().optimizer_defaults['decoupled_weight_decay']
        is False
    )
    fields = LearningSchema(torch.optim.SGD, 0.1, scheduler, {}, clip)
    assert (fields.scheduler, fields.gradient_op) == (scheduler, clip)
    assert LearningSchema.sgd(base_lr=0.2).base_lr == 0.2


def test_the_gradient_op_runs_in_training() -> None:
    """A normaliser of DRYTorch's changes the step the trainer takes."""
    module = EncoderDecoder()
    module(torch.randn(8, 4)).pow(2).sum().mul(100).backward()
    LearningSchema.sgd(
        gradient_op=gradient_ops.GradParamNormalizer()
    ).clip_gradients(module.parameters())
    for param in module.parameters():
        assert torch.linalg.vector_norm(param.grad) == pytest.approx(1.0)
    module.zero_grad()
    module(torch.randn(8, 4)).pow(2).sum().backward()
    gradient_ops.GradZScoreNormalizer()(module.parameters())
    for param in module.parameters():
        if param.numel() > 1:
            assert float(param.grad.mean()) == pytest.approx(0.0, abs=1e-6)
            assert float(param.grad.std()) == pytest.approx(1.0, rel=1e-4)
    assert not LearningSchema.sgd().modifies_gradients
    assert gradient_ops.NoOp()(module.parameters()) is None
