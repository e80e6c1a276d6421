"""drytorch's Trainer against a hand-written DDP loop, in one run.

    python benchmarks/ddp_overhead.py [--nproc 2] [--device cpu] [--rounds 30]

Starts ``--nproc`` ranks (torch.multiprocessing, torchrun's variables;
gloo with ``--device cpu``, NCCL with ``--device cuda``, whatever the
machine has).  Every rank builds the same MLP twice (same
initial weights) and the same synthetic data, then alternates, round after
round, one training epoch of each variant:

- ``trainer``: ``drytorch.Trainer`` (DDP, packed metric all-reduce every N
  steps, N adaptive as by default; no tracker, so that the loop itself is
  measured);
- ``hand``: a plain DDP loop doing the same work: the same shards of the
  same permutation, the same loss and its components accumulated on the
  device, one all-reduce of the epoch's sums at the end;
- ``hand_control``: the hand loop again, a second copy: its ratio to
  ``hand`` shows how far two identical loops differ on this machine, the
  noise against which the Trainer's ratio is read;
- ``per_metric``: the hand loop synchronising every metric at every step
  (a sum and a count each, as metric libraries do), for comparison.

The first rounds warm up and are dropped; the figure is the ratio of the
median epoch time per step, ``trainer / hand`` (target: at most 1.05).  The
order of the variants changes every round (a Williams square, see
``round_order``) so that neither drift in the machine's load nor the
variant run just before favours one.  Then one more epoch of each, with
counters, gives the collectives per step: ``torch.distributed.all_reduce``
calls (the metric path) and DDP's gradient-bucket all-reduces (a comm hook).

With ``--nproc 1`` a process group of one is forced
(``DRYTORCH_FORCE_PROCESS_GROUP=1``) so that the same distributed paths
run, which is how ``gpu_check.sh`` times one GPU with NCCL.

Results go to ``--out`` (``benchmarks/results/ddp_overhead.json``) and a
summary to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import platform
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / 'results' / 'ddp_overhead.json'
VARIANTS = ('trainer', 'hand', 'hand_control', 'per_metric')
# The loss and its reported values: M = 3 (total, cross entropy, logit L2).
LOGIT_WEIGHT = 0.01
N_METRICS = 3


@dataclasses.dataclass(frozen=True)
class Config:
    """What is trained; identical on every rank."""

    samples: int = 8192
    features: int = 256
    hidden: int = 512
    classes: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    rounds: int = 30
    warmup: int = 3
    device: str = 'cpu'
    sync_every: int | None = None  # the timed Trainer's; None: adaptive


# ----------------------------------------------------------------- shared
def make_data(config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(config.seed)
    features = torch.randn(
        config.samples, config.features, generator=generator
    )
    labels = torch.randint(
        0, config.classes, (config.samples,), generator=generator
    )
    return features, labels


def make_network(config: Config) -> nn.Module:
    torch.manual_seed(config.seed)
    return nn.Sequential(
        nn.Linear(config.features, config.hidden),
        nn.ReLU(),
        nn.Linear(config.hidden, config.hidden),
        nn.ReLU(),
        nn.Linear(config.hidden, config.classes),
    )


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels, reduction='none')


def logit_l2(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    del labels
    return logits.square().mean(dim=1)


def shard(
    config: Config, epoch: int, rank: int, world: int
) -> list[torch.Tensor]:
    """This rank's batches, written out by hand: the loader's rule.

    A permutation that depends on (seed, epoch) only, dealt round-robin,
    the tail that does not divide by the world size dropped.
    """
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    order = torch.randperm(config.samples, generator=generator)
    per_rank = config.samples // world
    return list(torch.split(order[rank::world][:per_rank], config.batch_size))


def round_order(round_index: int) -> list[str]:
    """The order of the variants in a round: a Williams square.

    Over ``len(VARIANTS)`` rounds (twice that for an odd count) every
    variant runs once in every position and right after every other
    variant once.  A plain rotation keeps each variant's predecessor
    fixed: the Trainer then always ran right after the per-metric loop
    (hundreds of small all-reduces, a different state of the caches and of
    the scheduler on a shared machine), a bias that the rotation does not
    cancel: in some runs the epoch after it was 7-14 % slower, and three
    quarters of the Trainer's epochs had that predecessor, one quarter of
    the hand loop's and none of the control's.
    """
    n = len(VARIANTS)
    base = [0] + [(j + 1) // 2 if j % 2 else n - j // 2 for j in range(1, n)]
    row = round_index % (n if n % 2 == 0 else 2 * n)
    order = [VARIANTS[(b + row) % n] for b in base]
    return order[::-1] if row >= n else order


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class Counter:
    """Counts Python all-reduces (the metric path) and DDP's buckets."""

    def __init__(self) -> None:
        self.all_reduce = 0
        self.buckets = 0
        self.active = False
        original = dist.all_reduce

        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.all_reduce += 1
            return original(*args, **kwargs)

        dist.all_reduce = counted

    def hook(self, state, bucket):
        """DDP's default all-reduce of a bucket, counted.

        It calls the process group directly, not ``dist.all_reduce``, so
        that gradient buckets are not counted as metric traffic.  No
        annotations: DDP checks them, and postponed ones are strings.
        """
        del state
        if self.active:
            self.buckets += 1
        group = dist.group.WORLD
        tensor = bucket.buffer().div_(group.size())
        work = group.allreduce([tensor])
        return work.get_future().then(lambda fut: fut.value()[0])


# --------------------------------------------------------------- variants
class HandLoop:
    """Plain PyTorch DDP training with the Trainer's arithmetic."""

    def __init__(
        self,
        config: Config,
        data: tuple[torch.Tensor, torch.Tensor],
        device: torch.device,
        per_metric: bool,
        hook: Any = None,
    ) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.config = config
        self.features, self.labels = data
        self.device = device
        self.per_metric = per_metric
        module = make_network(config).to(device)
        ids = [device.index] if device.type == 'cuda' else None
        self.ddp = DistributedDataParallel(module, device_ids=ids)
        if hook is not None:
            self.ddp.register_comm_hook(None, hook)
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr)
        self.epoch = 0
        self.metrics: dict[str, float] = {}

    def train_epoch(self) -> int:
        self.epoch += 1
        rank, world = dist.get_rank(), dist.get_world_size()
        batches = shard(self.config, self.epoch, rank, world)
        sums = torch.zeros(N_METRICS, dtype=torch.float64, device=self.device)
        count = 0
        self.ddp.train()
        for indices in batches:
            inputs = self.features[indices].to(self.device, non_blocking=True)
            targets = self.labels[indices].to(self.device, non_blocking=True)
            logits = self.ddp(inputs)
            ce = cross_entropy(logits, targets).mean()
            l2 = logit_l2(logits, targets).mean()
            loss = ce + LOGIT_WEIGHT * l2
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            n = len(indices)
            values = torch.stack([loss.detach(), ce.detach(), l2.detach()])
            if self.per_metric:
                # Every metric's sum and count, reduced at every step.
                for value in values:
                    total = (value * n).to(torch.float64)
                    seen = torch.tensor(
                        float(n), dtype=torch.float64, device=self.device
                    )
                    dist.all_reduce(total)
                    dist.all_reduce(seen)
            sums += values.to(torch.float64) * n
            count += n
        packed = torch.cat(
            [sums, torch.tensor([float(count)], device=self.device).double()]
        )
        dist.all_reduce(packed)
        totals = packed.tolist()
        names = ('Loss', 'CrossEntropy', 'LogitL2')
        self.metrics = {
            k: v / totals[-1] for k, v in zip(names, totals[:-1], strict=True)
        }
        return len(batches)


class TrainerLoop:
    """The same training through drytorch (a run must be active)."""

    def __init__(
        self,
        config: Config,
        data: tuple[torch.Tensor, torch.Tensor],
        device: torch.device,
        name: str,
        sync_every: int | None = None,
        hook: Any = None,
    ) -> None:
        from torch.utils.data import TensorDataset

        import drytorch

        self.config = config
        self.model = drytorch.Model(make_network(config), name, device=device)
        if hook is not None:
            self.model.training_module().register_comm_hook(None, hook)
        loss = drytorch.Loss(cross_entropy, 'CrossEntropy') + LOGIT_WEIGHT * (
            drytorch.Loss(logit_l2, 'LogitL2')
        )
        self.trainer = drytorch.Trainer(
            self.model,
            name=f'Trainer_{name}',
            loader=drytorch.DataLoader(
                TensorDataset(*data), config.batch_size, seed=config.seed
            ),
            loss=loss,
            learning_schema=drytorch.LearningSchema.adam_w(base_lr=config.lr),
            sync_every=sync_every,
        )
        assert len(self.trainer.accumulator.names) == N_METRICS

    def train_epoch(self) -> int:
        self.trainer.train(1)
        per_rank = self.config.samples // dist.get_world_size()
        return math.ceil(per_rank / self.config.batch_size)


# ------------------------------------------------------------------ ranks
def rank_main(
    rank: int, world: int, port: int, config: Config, out: str
) -> None:
    os.environ.update(
        {
            'RANK': str(rank),
            'LOCAL_RANK': str(rank),
            'WORLD_SIZE': str(world),
            'LOCAL_WORLD_SIZE': str(world),
            'GROUP_RANK': '0',
            'MASTER_ADDR': '127.0.0.1',
            'MASTER_PORT': str(port),
        }
    )
    import drytorch
    from drytorch.distributed import init_distributed, teardown_distributed

    torch.manual_seed(config.seed)
    device = (
        torch.device(config.device, rank)
        if config.device == 'cuda'
        else (torch.device('cpu'))
    )
    # The backend follows --device, not the machine: a CPU run on a GPU
    # machine must not get NCCL.  A world of one gets a group of one, the
    # path that DRYTORCH_FORCE_PROCESS_GROUP=1 (set by main) enables.
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    if world > 1:
        init_distributed(backend=backend)
    else:
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend,
            store=dist.HashStore(),
            rank=0,
            world_size=1,
            device_id=device if device.type == 'cuda' else None,
        )
        init_distributed()
    data = make_data(config)
    with tempfile.TemporaryDirectory() as tmp:
        experiment = drytorch.Experiment(
            config, name='DDPOverhead', par_dir=tmp
        )
        with experiment.create_run(record=False):
            result = measure(config, data, device)
    if dist.get_rank() == 0:
        pathlib.Path(out).write_text(json.dumps(result))
    teardown_distributed()


def measure(
    config: Config,
    data: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
) -> dict[str, Any]:
    loops: dict[str, Any] = {
        'trainer': TrainerLoop(
            config, data, device, 'timed', sync_every=config.sync_every
        ),
        'hand': HandLoop(config, data, device, per_metric=False),
        'hand_control': HandLoop(config, data, device, per_metric=False),
        'per_metric': HandLoop(config, data, device, per_metric=True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    steps: dict[str, int] = {}
    for round_index in range(config.rounds + config.warmup):
        for name in round_order(round_index):
            dist.barrier()
            synchronize(device)
            start = time.perf_counter()
            start_cpu = time.process_time()
            steps[name] = loops[name].train_epoch()
            synchronize(device)
            elapsed = time.perf_counter() - start
            elapsed_cpu = time.process_time() - start_cpu
            if round_index >= config.warmup:
                seconds[name].append(elapsed)
                cpu[name].append(elapsed_cpu)
    # Every rank must agree: take the slowest rank's time of each epoch.
    for name in VARIANTS:
        for series in (seconds, cpu):
            times = torch.tensor(
                series[name], dtype=torch.float64, device=device
            )
            dist.all_reduce(times, op=dist.ReduceOp.MAX)
            series[name] = times.tolist()
    per_step = {
        name: statistics.median(seconds[name]) / steps[name]
        for name in VARIANTS
    }
    trainer_metrics = loops['trainer'].trainer.computed_metrics
    hand_metrics = loops['hand'].metrics
    return {
        'backend': dist.get_backend(),
        'model_device': str(loops['trainer'].model.device),
        'per_step_s': per_step,
        'fastest_step_s': {
            name: min(seconds[name]) / steps[name] for name in VARIANTS
        },
        # Each round's trainer epoch over the hand epoch next to it: the
        # machine's slow drifts cancel out.
        'paired_ratios': [
            t / h
            for t, h in zip(seconds['trainer'], seconds['hand'], strict=True)
        ],
        # CPU time of the busiest rank: what the loop costs when other
        # processes compete for the cores (waits in collectives excluded).
        'cpu_per_step_s': {
            name: statistics.median(cpu[name]) / steps[name]
            for name in VARIANTS
        },
        'epoch_s': seconds,
        'epoch_cpu_s': cpu,
        'steps_per_epoch': steps,
        'adaptive_sync_every': loops['trainer'].trainer.sync.every,
        'metrics_last_epoch': {
            'trainer': trainer_metrics,
            'hand': hand_metrics,
        },
        # Same work: same shards, same weights, so the same numbers.
        'same_metrics': all(
            math.isclose(trainer_metrics[k], v, rel_tol=1e-9)
            for k, v in hand_metrics.items()
        ),
        'collectives': count_collectives(config, data, device),
    }


def count_collectives(
    config: Config,
    data: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
) -> dict[str, Any]:
    """One epoch of each variant with fresh models, everything counted."""
    counter = Counter()
    variants: dict[str, Any] = {
        'trainer_adaptive': TrainerLoop(
            config, data, device, 'count_adaptive', hook=counter.hook
        ),
        'trainer_every_8': TrainerLoop(
            config, data, device, 'count_8', sync_every=8, hook=counter.hook
        ),
        'trainer_every_1': TrainerLoop(
            config, data, device, 'count_1', sync_every=1, hook=counter.hook
        ),
        'hand': HandLoop(config, data, device, False, hook=counter.hook),
        'per_metric': HandLoop(config, data, device, True, hook=counter.hook),
    }
    counts: dict[str, Any] = {}
    for name, loop in variants.items():
        counter.all_reduce = counter.buckets = 0
        counter.active = True
        steps = loop.train_epoch()
        counter.active = False
        counts[name] = {
            'steps': steps,
            'metric_all_reduces': counter.all_reduce,
            'metric_all_reduces_per_step': counter.all_reduce / steps,
            'ddp_bucket_all_reduces_per_step': counter.buckets / steps,
        }
    return counts


# ----------------------------------------------------------------- parent
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(('127.0.0.1', 0))
        return int(probe.getsockname()[1])


def summary(result: dict[str, Any]) -> str:
    per_step = result['per_step_s']
    counts = result['collectives']
    lines = [
        f'{result["world_size"]} rank(s), {result["backend"]}, '
        f'{result["device"]}; {result["steps_per_epoch"]["trainer"]} steps '
        f'per epoch, {result["config"]["rounds"]} timed rounds',
        f'  median step: trainer {per_step["trainer"] * 1e3:.3f} ms, '
        f'hand-written DDP {per_step["hand"] * 1e3:.3f} ms, '
        f'per-metric sync {per_step["per_metric"] * 1e3:.3f} ms',
        f'  control: hand again / hand {result["ratio_control_over_hand"]:.3f}'
        f' (wall), {result["ratio_control_cpu"]:.3f} (CPU): the noise',
        f'  ratio trainer / hand: {result["ratio_trainer_over_hand"]:.3f} '
        f'(target <= 1.05); per-metric / hand: '
        f'{result["ratio_per_metric_over_hand"]:.3f}',
        f'  trainer / hand, median of paired rounds '
        f'{result["ratio_paired_median"]:.3f}, of fastest epochs '
        f'{result["ratio_fastest"]:.3f}, of median CPU time per step '
        f'{result["ratio_cpu"]:.3f}; same metrics: '
        f'{result["same_metrics"]}; load average before/after '
        f'{result["host"]["load_average_before"][0]:.1f}/'
        f'{result["host"]["load_average_after"][0]:.1f} on '
        f'{result["host"]["cpus"]} CPUs',
        f'  metric all-reduces per step (M = {N_METRICS}):',
    ]
    for name, count in counts.items():
        lines.append(
            f'    {name:17s} {count["metric_all_reduces_per_step"]:.4f} '
            f'({count["metric_all_reduces"]} in {count["steps"]} steps); '
            f'DDP buckets per step '
            f'{count["ddp_bucket_all_reduces_per_step"]:.1f}'
        )
    lines.append(
        f'  per-metric synchronisation needs {2 * N_METRICS} per step '
        f'(sum and count of each) or {N_METRICS} (one mean each, as '
        "Lightning's sync_dist)"
    )
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--nproc', type=int, default=2)
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--rounds', type=int, default=Config.rounds)
    parser.add_argument('--warmup', type=int, default=Config.warmup)
    parser.add_argument('--samples', type=int, default=Config.samples)
    parser.add_argument('--hidden', type=int, default=Config.hidden)
    parser.add_argument('--batch-size', type=int, default=Config.batch_size)
    parser.add_argument(
        '--sync-every',
        type=int,
        default=None,
        help="the timed Trainer's sync interval (default: adaptive)",
    )
    parser.add_argument('--out', default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    config = Config(
        rounds=args.rounds,
        warmup=args.warmup,
        samples=args.samples,
        hidden=args.hidden,
        batch_size=args.batch_size,
        device=args.device,
        sync_every=args.sync_every,
    )
    if args.device == 'cuda' and torch.cuda.device_count() < args.nproc:
        parser.error(
            f'--nproc {args.nproc} needs as many GPUs; '
            f'{torch.cuda.device_count()} found.'
        )
    os.environ['DRYTORCH_INIT_MODE'] = 'none'
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    if args.nproc == 1:
        os.environ['DRYTORCH_FORCE_PROCESS_GROUP'] = '1'
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        raw = pathlib.Path(tmp) / 'rank0.json'
        started = time.perf_counter()
        mp.spawn(
            rank_main,
            args=(args.nproc, free_port(), config, str(raw)),
            nprocs=args.nproc,
            join=True,
        )
        wall = time.perf_counter() - started
        measured = json.loads(raw.read_text())
    per_step = measured['per_step_s']
    result = {
        'benchmark': 'ddp_overhead',
        'world_size': args.nproc,
        'device': (
            torch.cuda.get_device_name(0) if args.device == 'cuda' else 'cpu'
        ),
        'host': {
            'cpus': os.cpu_count(),
            'load_average_before': load_before,
            'load_average_after': os.getloadavg(),
            'python': platform.python_version(),
            'torch': torch.__version__,
            'omp_num_threads': int(os.environ['OMP_NUM_THREADS']),
        },
        'config': dataclasses.asdict(config),
        'metrics_reported': N_METRICS,
        'ratio_trainer_over_hand': per_step['trainer'] / per_step['hand'],
        'ratio_per_metric_over_hand': (
            per_step['per_metric'] / per_step['hand']
        ),
        'ratio_paired_median': statistics.median(measured['paired_ratios']),
        'ratio_control_over_hand': (
            per_step['hand_control'] / per_step['hand']
        ),
        'ratio_control_cpu': (
            measured['cpu_per_step_s']['hand_control']
            / measured['cpu_per_step_s']['hand']
        ),
        'ratio_cpu': (
            measured['cpu_per_step_s']['trainer']
            / measured['cpu_per_step_s']['hand']
        ),
        'ratio_fastest': (
            measured['fastest_step_s']['trainer']
            / measured['fastest_step_s']['hand']
        ),
        'per_metric_sync_would_need_per_step': {
            'sum_and_count_each': 2 * N_METRICS,
            'one_mean_each_like_lightning_sync_dist': N_METRICS,
        },
        'wall_s': wall,
        **measured,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n')
    print(summary(result))
    print(f'  written to {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
