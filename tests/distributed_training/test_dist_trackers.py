"""Trackers in a 2- and 3-rank run: one run id, one writer, one output.

Every rank creates the same events; only rank zero's dispatcher holds the
CSV and YAML dumpers.  An audit hook in each rank records every write-like
file operation under the experiments' folder, so "rank 1 writes nothing"
is observed rather than assumed.
"""

from __future__ import annotations

import csv
from collections.abc import Callable

import pytest
import yaml

from tests.distributed_training.conftest import Launch

SOURCES = ('Trainer', 'Validation', 'Test')


@pytest.mark.parametrize('world_size', [2, 3])
def test_the_run_id_is_the_same_on_every_rank(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    launched = launch(world_size)
    ids = {rank['run_id'] for rank in launched.ranks}
    assert len(ids) == 1
    runs = launched.par_dir / 'DistTraining' / 'runs'
    assert [path.name for path in runs.iterdir()] == list(ids)


@pytest.mark.parametrize('world_size', [2, 3])
def test_only_rank_zero_holds_trackers(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    ranks = launch(world_size).ranks
    assert ranks[0]['live_trackers'] == ['CSVDumper', 'YamlDumper']
    assert all(rank['live_trackers'] == [] for rank in ranks[1:])


@pytest.mark.parametrize('world_size', [2, 3])
def test_ranks_other_than_zero_write_nothing(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    ranks = launch(world_size).ranks
    for rank in ranks[1:]:
        assert rank['writes'] == [], f'rank {rank["rank"]} wrote'
    written = {path for _, path in ranks[0]['writes']}
    assert any('Trainer.csv' in path for path in written)
    assert any('attempts.yaml' in path for path in written)


@pytest.mark.parametrize('world_size', [2, 3])
def test_the_csv_files_hold_each_epoch_once(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    launched = launch(world_size)
    run_dir = (
        launched.par_dir / 'DistTraining' / 'runs' / (launched.zero['run_id'])
    )
    folder = run_dir / 'csv_metrics' / 'frozen'
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f'{source}.csv' for source in SOURCES
    )
    metrics = {
        'Trainer': launched.zero['train_metrics'],
        'Validation': launched.zero['validation_metrics'],
        'Test': launched.zero['test_metrics'],
    }
    for source in SOURCES:
        with (folder / f'{source}.csv').open(newline='') as stream:
            rows = list(csv.DictReader(stream))
        assert len(rows) == 1, f'{source}.csv: {rows}'
        row = rows[0]
        assert row['source'] == source
        assert int(row['epoch']) == 1
        for name, value in metrics[source].items():
            assert float(row[name]) == pytest.approx(value, rel=1e-9)


@pytest.mark.parametrize('world_size', [2, 3])
def test_the_yaml_metadata_records_one_attempt(
    launch: Callable[[int], Launch], world_size: int
) -> None:
    launched = launch(world_size)
    run_id = launched.zero['run_id']
    metadata = launched.par_dir / 'DistTraining' / 'runs' / run_id / 'metadata'
    config = yaml.safe_load((metadata / 'config.yaml').read_text())
    assert config == {'case': 'distributed training'}
    attempts = yaml.safe_load((metadata / 'attempts.yaml').read_text())
    assert len(attempts) == 1
    assert attempts[0]['run_id'] == run_id
    assert attempts[0]['attempt'] == 1
    assert (metadata / 'frozen' / 'architecture.yaml').is_file()
