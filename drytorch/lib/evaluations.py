"""Validation and test: one pass over the data in inference mode.

Evaluation shards keep every sample exactly once (see ``loading``), and
every rank evaluates with rank zero's buffers (BatchNorm statistics), so the
reported metrics equal those of the saved model in a single process on the
same data.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from drytorch.core import exceptions, log_events
from drytorch.distributed import peers, ranks
from drytorch.lib.loading import DataLoader
from drytorch.lib.models import Model
from drytorch.lib.objectives import Objective
from drytorch.lib.runners import LoopOutcome, Runner, to_device, unpack_batch

__all__ = ['Diagnostic', 'Evaluation', 'Test', 'Validation']


def _split_samples(outputs: Any, n: int) -> list[Any]:
    """Per-sample outputs of a batch (tensors, or tuples/dicts of them)."""
    if isinstance(outputs, torch.Tensor):
        return list(outputs.unbind(0))
    if isinstance(outputs, tuple | list):
        parts = [_split_samples(o, n) for o in outputs]
        return [type(outputs)(p) for p in zip(*parts, strict=True)]
    if isinstance(outputs, dict):
        keys = list(outputs)
        parts = [_split_samples(outputs[k], n) for k in keys]
        return [
            dict(zip(keys, p, strict=True)) for p in zip(*parts, strict=True)
        ]
    return [outputs] * n


def _detach_cpu(data: Any) -> Any:
    if isinstance(data, torch.Tensor):
        return data.detach().cpu()
    if isinstance(data, tuple | list):
        return type(data)(_detach_cpu(d) for d in data)
    if isinstance(data, dict):
        return {k: _detach_cpu(v) for k, v in data.items()}
    return data


class Evaluation(Runner):
    """Computes metrics of a model over a data set, without gradients.

    Args:
        model: the model.
        name: the source name in logs.
        loader: the data.
        metric: a Metric, a collection of them, or a Loss.
        store_outputs: keep the outputs (detached, on CPU) in
            ``outputs_list``, gathered on rank zero in data-set order;
            ``evaluation(store_outputs=True)`` does so for one call, as in
            DRYTorch.
        sync_every: steps between sync points (None: adaptive).

    """

    def __init__(
        self,
        model: Model,
        name: str = '',
        *,
        loader: DataLoader,
        metric: Objective,
        store_outputs: bool = False,
        sync_every: int | None = None,
        register: bool = True,
    ) -> None:
        super().__init__(
            model, name, loader=loader, objective=metric, sync_every=sync_every
        )
        self.store_outputs = store_outputs
        self.outputs_list: list[Any] = []
        self.computed_metrics: dict[str, float] = {}
        self._local_outputs: list[Any] = []
        if register:
            self.register()

    def _step(self, batch: Any, n: int) -> None:
        inputs, targets = unpack_batch(batch, self.name)
        inputs = to_device(inputs, self.model.device)
        targets = to_device(targets, self.model.device)
        with self.model.autocast():
            outputs = self.model(inputs)
        values = _compute(self.objective, outputs, targets, self.name)
        self.accumulator.add(values, n)
        if self.store_outputs:
            self._local_outputs.extend(_split_samples(_detach_cpu(outputs), n))

    def _idle_step(self) -> None:
        """A forward pass on a stand-in batch, its outputs discarded.

        A sharded module all-gathers its parameters in every forward pass,
        so a rank whose shard of the data has run out must still take
        part.  It counts nothing: the step's weight stays zero.
        """
        inputs, _ = unpack_batch(self.loader.stand_in(), self.name)
        with self.model.autocast():
            self.model(to_device(inputs, self.model.device))

    def run(self) -> LoopOutcome:
        """One pass; publishes the global metrics of the model's epoch.

        Every rank first takes rank zero's buffers: under DDP each rank's
        BatchNorm statistics followed its own batches, and the metrics must
        be those of the module that rank zero saves.
        """
        self.accumulator.reset()
        self._local_outputs = []
        self.model.broadcast_buffers()
        plan = self.loader.plan(training=False)
        module = self.model.forward_module
        was_training = module.training
        module.eval()
        # FSDP keeps its all-gather buffers from one pass to the next, and a
        # tensor made in inference mode cannot be written outside it: a
        # sharded module's first pass in inference mode would break the
        # training passes after it
        no_grad = torch.no_grad if self.model.sharded else torch.inference_mode
        try:
            with no_grad():
                outcome = self.run_loop(plan, self._step)
        finally:
            module.train(was_training)
        if outcome.preempted and not outcome.finished:
            # stopped early: nothing to publish, the pass runs again on
            # resume; a pass whose last step read the flag is complete
            return outcome
        self.computed_metrics = outcome.metrics
        if self.store_outputs:
            self.outputs_list = self._gather_outputs()
        if not self.publishes_metrics:
            return outcome
        log_events.MetricEvent(
            model_name=self.model.name,
            source_name=self.name,
            epoch=self.model.epoch,
            metrics=dict(outcome.metrics),
        )
        return outcome

    def _gather_outputs(self) -> list[Any]:
        """All ranks' outputs on rank zero, in data-set order (collective).

        Rank r holds samples r, r + W, ...; interleaving the ranks' lists
        restores the data set's order.
        """
        if not ranks.is_distributed():
            return self._local_outputs
        world = ranks.get_world_size()
        gathered: list[Any] = [None] * world if ranks.is_rank_zero() else []
        dist.gather_object(
            self._local_outputs,
            gathered if ranks.is_rank_zero() else None,
            dst=0,
        )
        if not ranks.is_rank_zero():
            return []
        ordered: list[Any] = []
        longest = max(len(g) for g in gathered)
        for i in range(longest):
            ordered.extend(g[i] for g in gathered if i < len(g))
        return ordered

    publishes_metrics = True

    def __call__(self, store_outputs: bool | None = None) -> None:
        """Run the evaluation (storing the outputs if ``store_outputs``)."""
        kept = self.store_outputs
        if store_outputs is not None:
            self.store_outputs = store_outputs
        try:
            with peers.named(lambda: f'{self.name} of {self.model.name}'):
                outcome = self.run()
        finally:
            self.store_outputs = kept
        if outcome.preempted and not outcome.finished:
            raise exceptions.PreemptedExit(
                f'{self.name} was preempted; it will run again on resume.'
            )


def _compute(
    objective: Objective, outputs: Any, targets: Any, source: str
) -> dict[str, torch.Tensor]:
    """Objective values, with the shapes in the error when they fail."""
    try:
        return objective.compute(outputs, targets)
    except (RuntimeError, ValueError, IndexError) as err:
        if isinstance(err, exceptions.DryTorchError):
            raise
        shape_out = tuple(getattr(outputs, 'shape', ()))
        shape_tgt = tuple(getattr(targets, 'shape', ()))
        raise ValueError(
            f'{source}: {objective!r} failed on outputs of shape '
            f'{shape_out} and targets of shape {shape_tgt}: {err}. Check '
            "that the loader's targets match the model's outputs."
        ) from err


class Diagnostic(Evaluation):
    """An evaluation whose metrics are not logged (DRYTorch's).

    For a look at the model (its outputs, a metric) that should leave no
    trace in the run's records: no ``MetricEvent``, so no tracker sees it.
    Its metrics are global all the same, and ``computed_metrics`` holds them.
    """

    publishes_metrics = False


class Validation(Evaluation):
    """Evaluation of a model during training."""


class Test(Evaluation):
    """Final evaluation of a model; announced with start and end events."""

    def __call__(self, store_outputs: bool | None = None) -> None:
        """Run the test between its start and end events."""
        log_events.StartTestEvent(
            source_name=self.name, model_name=self.model.name
        )
        try:
            super().__call__(store_outputs)
        finally:
            log_events.EndTestEvent(
                source_name=self.name, model_name=self.model.name
            )
