"""How a model's module is spread over the ranks: replicated or sharded.

Two wrappings, chosen once per model (``Model(parallel=...)``):

- ``'ddp'`` (the default): every rank holds the whole module, and
  ``DistributedDataParallel`` all-reduces the gradients in the backward
  pass.  The wrapper adds nothing to the module's state, so the model
  builds it at the first training call.
- ``'fsdp'``: FSDP2's ``fully_shard`` over a one-dimensional device mesh
  of the model's device type (a CPU mesh under gloo).  Parameters,
  gradients and optimizer state are split across the ranks; a forward
  pass all-gathers each unit's parameters and frees them after, the
  backward pass reduce-scatters the gradients.  Sharding replaces the
  parameters with DTensors, so it happens when the model is made, before
  an optimizer holds them.

The rest of the library needs two facts from here, and no more: whether
the state is sharded (a checkpoint then gathers it: a collective every
rank calls, never on one side of an ``if rank == 0``) and whether a
forward pass is a collective (an evaluation step without samples must
then still run one, or the other ranks wait for it forever).

Checkpoints hold the full state under the plain module's names, in the
format a module in one process writes: optimizer states keyed by the
parameter's position, as ``torch.optim.Optimizer.state_dict`` keys them.
A checkpoint written under FSDP therefore loads into a plain module, and
the other way round.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    from torch.distributed.fsdp import MixedPrecisionPolicy

__all__ = [
    'PARALLEL_CHOICES',
    'Choice',
    'DDPOptions',
    'Shard',
    'check_ddp_options',
    'check_parallel',
    'choose',
    'fsdp_policy',
    'full_optimizer_state_dict',
    'full_state_dict',
    'load_full_optimizer_state_dict',
    'load_full_state_dict',
    'plain_optimizer_state',
    'replicate',
    'check_group',
    'shard_module',
    'shard_predicate',
    'shard_units',
]

PARALLEL_CHOICES = ('ddp', 'fsdp')

Shard: TypeAlias = (
    Callable[[nn.Module], bool]
    | type[nn.Module]
    | tuple[type[nn.Module], ...]
    | None
)
"""Which submodules FSDP shards as units of their own.

A predicate of the submodule, or module classes (every transformer block,
say); None shards the root alone.  The root is always sharded, last.
"""

# The segment that ``torch.compile`` puts in the names of what it wraps;
# the state dict helpers of torch.distributed.checkpoint leave it out.
_COMPILED_SEGMENT = '_orig_mod'


@dataclasses.dataclass(frozen=True)
class Choice:
    """A model's wrapping, checked: what :func:`shard_module` needs.

    Attributes:
        kind: ``'ddp'`` or ``'fsdp'``.
        predicate: the submodules FSDP shards as units (None: root only).
        policy: FSDP's mixed precision (None: none, or not FSDP).

    """

    kind: str
    predicate: Callable[[nn.Module], bool] | None = None
    policy: MixedPrecisionPolicy | None = None


def choose(
    parallel: str | None,
    shard: Shard = None,
    mixed_precision: bool | MixedPrecisionPolicy = False,
) -> Choice:
    """Check a model's options of parallelism, all at once.

    Checked when the model is made, in one process too, so that a script
    meant for a cluster fails on the laptop where it is written, and not
    after its job has waited in the queue.

    Raises:
        ValueError: for an unknown ``parallel``, or FSDP's options (``shard``,
            a ``MixedPrecisionPolicy``) with another wrapping.
        TypeError: for a ``shard`` or ``mixed_precision`` of a wrong type.

    """
    kind = check_parallel(parallel)
    predicate = shard_predicate(shard)
    if kind == 'fsdp':
        return Choice(kind, predicate, fsdp_policy(mixed_precision))
    if shard is not None:
        raise ValueError(
            f"shard={shard!r} applies to parallel='fsdp' only, and this "
            f"model has parallel={parallel!r}. Pass parallel='fsdp' to "
            'shard, or drop shard=.'
        )
    if not isinstance(mixed_precision, bool):
        raise ValueError(
            f'mixed_precision={mixed_precision!r} is a policy of '
            f"parallel='fsdp', and this model has parallel={parallel!r}. "
            "Pass mixed_precision=True for autocast, or parallel='fsdp'."
        )
    return Choice(kind)


@dataclasses.dataclass(frozen=True)
class DDPOptions:
    """``DistributedDataParallel``'s own options, passed through as given.

    Attributes:
        find_unused_parameters: look for parameters that got no gradient
            in a step (a branch not taken), at the cost of a graph walk
            per step; without it such a model fails at the next step.
        static_graph: the set of used parameters never changes, so DDP
            may plan its buckets once (it also allows reentrant
            checkpointing).
        gradient_as_bucket_view: gradients are views into the buckets,
            saving a copy and the memory of one gradient.
        bucket_cap_mb: the size of a bucket in MiB (None: torch's 25).

    """

    find_unused_parameters: bool = False
    static_graph: bool = False
    gradient_as_bucket_view: bool = False
    bucket_cap_mb: float | None = None

    def __post_init__(self) -> None:
        for name in (
            'find_unused_parameters',
            'static_graph',
            'gradient_as_bucket_view',
        ):
            _check_flag(name, getattr(self, name))
        cap = self.bucket_cap_mb
        if cap is None:
            return
        if isinstance(cap, bool) or not isinstance(cap, int | float):
            raise TypeError(
                'bucket_cap_mb must be a number of MiB (or None for '
                f"torch's 25), got {type(cap).__name__} {cap!r}."
            )
        if not (math.isfinite(cap) and cap > 0):
            raise ValueError(
                f'bucket_cap_mb must be positive and finite, got {cap!r}; '
                "None keeps torch's 25 MiB."
            )

    @property
    def is_default(self) -> bool:
        """Whether every option is torch's default."""
        return self == DDPOptions()

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``DistributedDataParallel``."""
        options: dict[str, Any] = {
            'find_unused_parameters': self.find_unused_parameters,
            'static_graph': self.static_graph,
            'gradient_as_bucket_view': self.gradient_as_bucket_view,
        }
        if self.bucket_cap_mb is not None:
            options['bucket_cap_mb'] = self.bucket_cap_mb
        return options


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(
            f'{name} must be True or False, got {type(value).__name__} '
            f'{value!r}.'
        )


def check_ddp_options(kind: str, options: DDPOptions) -> None:
    """Refuse DDP's options with another wrapping.

    Raises:
        ValueError: with ``parallel='fsdp'`` and an option that is not
            torch's default; FSDP would ignore it silently.

    """
    if kind == 'ddp' or options.is_default:
        return
    default = DDPOptions()
    given = ', '.join(
        f'{f.name}={getattr(options, f.name)!r}'
        for f in dataclasses.fields(options)
        if getattr(options, f.name) != getattr(default, f.name)
    )
    raise ValueError(
        f'{given}: options of DistributedDataParallel, and this model has '
        f'parallel={kind!r}, which does not use them. Drop them, or pass '
        "parallel='ddp'."
    )


def check_parallel(parallel: str | None) -> str:
    """The wrapping asked for: ``'ddp'`` (also for None) or ``'fsdp'``.

    Raises:
        ValueError: for any other value, naming the allowed ones.

    """
    if parallel is None:
        return 'ddp'
    if parallel not in PARALLEL_CHOICES:
        raise ValueError(
            f'parallel={parallel!r} is not a known wrapping. Use None (the '
            "default: 'ddp' under a process group), 'ddp' (every rank holds "
            "the whole module) or 'fsdp' (parameters, gradients and "
            'optimizer state sharded over the ranks).'
        )
    return parallel


def shard_predicate(shard: Shard) -> Callable[[nn.Module], bool] | None:
    """``shard`` as a predicate of a submodule (None: the root alone).

    Raises:
        TypeError: if ``shard`` is neither a callable nor module classes.

    """
    if shard is None:
        return None
    if isinstance(shard, type):
        shard = (shard,)
    if isinstance(shard, tuple):
        bad = [c for c in shard if not _is_module_class(c)]
        if bad or not shard:
            raise TypeError(
                'shard= takes torch.nn.Module subclasses (a tuple of them) '
                f'or a function of a submodule, got {shard!r}.'
            )
        classes = shard
        return lambda module: isinstance(module, classes)
    if callable(shard):
        return shard
    raise TypeError(
        'shard= takes torch.nn.Module subclasses (a tuple of them) or a '
        f'function of a submodule, got {type(shard).__name__} {shard!r}.'
    )


def _is_module_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, nn.Module)


def fsdp_policy(
    mixed_precision: bool | MixedPrecisionPolicy,
) -> MixedPrecisionPolicy | None:
    """The mixed-precision policy of a sharded module (None: float32).

    ``True`` computes in bfloat16 and reduces gradients in float32, on
    every device: FSDP casts the parameters itself (no autocast), and
    bfloat16 has float32's range, so no gradient scaler is needed (torch's
    scaler finds non-finite values per rank, which a sharded step cannot
    afford).  A ``MixedPrecisionPolicy`` is used as given.

    Raises:
        TypeError: if ``mixed_precision`` is neither a bool nor a policy.

    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if isinstance(mixed_precision, MixedPrecisionPolicy):
        return mixed_precision
    if not isinstance(mixed_precision, bool):
        raise TypeError(
            'mixed_precision takes a bool or, with parallel="fsdp", a '
            'torch.distributed.fsdp.MixedPrecisionPolicy; got '
            f'{type(mixed_precision).__name__} {mixed_precision!r}.'
        )
    if not mixed_precision:
        return None
    return MixedPrecisionPolicy(
        param_dtype=torch.bfloat16, reduce_dtype=torch.float32
    )


def shard_units(module: nn.Module, choice: Choice) -> list[str]:
    """The names of the submodules that FSDP shards as units of their own.

    Raises:
        ValueError: if ``choice`` has a predicate that picks no submodule
            (a class the module does not use, most likely).

    """
    if choice.predicate is None:
        return []
    names = [
        name
        for name, sub in module.named_modules()
        if name and choice.predicate(sub)
    ]
    if not names:
        raise ValueError(
            f'shard= picks no submodule of {type(module).__name__}; check '
            'the classes or the function, or pass shard=None to shard the '
            'whole module as one unit.'
        )
    return names


def check_group(device: torch.device) -> None:
    """Refuse FSDP where the process group cannot carry the device's tensors.

    Raises:
        ValueError: on the CPU, under a group without gloo.

    """
    backend = str(dist.get_backend())
    if device.type == 'cpu' and 'gloo' not in backend:
        raise ValueError(
            f"parallel='fsdp' on the CPU needs a gloo process group, but "
            f'the group runs {backend}. Put the model on the GPU '
            "(device=None picks this rank's), or start the group with "
            "init_distributed('gloo')."
        )


def shard_module(
    module: nn.Module, device: torch.device, choice: Choice
) -> None:
    """Shard ``module`` in place over every rank (collective).

    The submodules of :func:`shard_units` are sharded first, innermost
    first (FSDP2 needs a unit's children sharded before it), then the
    root, which takes every parameter left.  Every rank must call it with
    the same module: the mesh spans the whole group.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    check_group(device)
    names = set(shard_units(module, choice))
    units = [sub for name, sub in module.named_modules() if name in names]
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {'mesh': mesh}
    if choice.policy is not None:
        options['mp_policy'] = choice.policy
    # named_modules() lists a parent before its children: reversed, every
    # unit comes after the units inside it
    for sub in reversed(units):
        fully_shard(sub, **options)
    fully_shard(module, **options)


def replicate(
    module: nn.Module,
    device: torch.device,
    options: DDPOptions | None = None,
) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` (collective: syncs).

    DDP broadcasts rank zero's parameters and buffers when it is built,
    so every rank must build it at the same point.  ``options`` are
    passed through (None: torch's defaults).
    """
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == 'cuda' else None
    kwargs = (options or DDPOptions()).kwargs()
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)


def _full_options(*, loading: bool) -> StateDictOptions:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if loading:
        # rank zero's values reach every rank, which keeps its own shard
        return StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=True
        )
    # gathered on rank zero only, on the CPU: the writer is rank zero
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dict(module: nn.Module) -> dict[str, Any]:
    """The sharded module's full state on rank zero (collective).

    Other ranks get an empty dictionary: only rank zero writes.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_full_options(loading=False))


def load_full_state_dict(module: nn.Module, state: dict[str, Any]) -> None:
    """Load a full state into a sharded module (collective).

    Rank zero's ``state`` is broadcast; each rank keeps its shard.
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, state, options=_full_options(loading=True))


def full_optimizer_state_dict(
    module: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """The optimizer's full state on rank zero, as a plain one (collective).

    Keyed by parameter position like ``Optimizer.state_dict()``, so that
    it loads into the optimizer of a plain module.  Other ranks get an
    empty state.
    """
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
    )

    named = get_optimizer_state_dict(
        module, optimizer, options=_full_options(loading=False)
    )
    return plain_optimizer_state(named)


def plain_optimizer_state(named: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state keyed by parameter names, keyed by position.

    torch.distributed.checkpoint keys states by the parameters' names; a
    plain ``Optimizer.load_state_dict`` wants their positions in the
    parameter groups, in order.
    """
    groups = named.get('param_groups') or []
    position: dict[str, int] = {}
    plain_groups = []
    for group in groups:
        ids = [
            position.setdefault(fqn, len(position)) for fqn in group['params']
        ]
        plain_groups.append({**group, 'params': ids})
    states = named.get('state') or {}
    plain_state = {position[fqn]: value for fqn, value in states.items()}
    return {
        'state': dict(sorted(plain_state.items())),
        'param_groups': plain_groups,
    }


def load_full_optimizer_state_dict(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Load a plain optimizer state into a sharded one (collective).

    Positions become the parameters' names in the module; rank zero's
    values are broadcast and each rank keeps its shard.

    Raises:
        ValueError: if the saved parameter groups do not match the
            optimizer's (another model, or another grouping of rates).

    """
    from torch.distributed.checkpoint.state_dict import (
        set_optimizer_state_dict,
    )

    names = {
        id(p): _plain_name(n)
        for n, p in module.named_parameters(remove_duplicate=False)
    }
    own = [[names[id(p)] for p in g['params']] for g in optimizer.param_groups]
    saved = state['param_groups']
    if [len(g['params']) for g in saved] != [len(g) for g in own]:
        raise ValueError(
            'The checkpoint holds an optimizer with parameter groups of '
            f'{[len(g["params"]) for g in saved]} parameters, this one has '
            f'{[len(g) for g in own]}: it was written for another model or '
            'another grouping of learning rates.'
        )
    order = [fqn for group in own for fqn in group]
    named = {
        'state': {order[i]: value for i, value in state['state'].items()},
        'param_groups': [
            {**group, 'params': [order[i] for i in group['params']]}
            for group in saved
        ],
    }
    set_optimizer_state_dict(
        module, optimizer, named, options=_full_options(loading=True)
    )


def _plain_name(name: str) -> str:
    return '.'.join(p for p in name.split('.') if p != _COMPILED_SEGMENT)
