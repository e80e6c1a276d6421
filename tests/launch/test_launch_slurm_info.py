"""The request against what sinfo reports, with a stand-in sinfo on PATH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drytorch.launch import (
    ClusterUnavailableError,
    InvalidLaunchError,
    LaunchError,
    LaunchRequest,
    slurm_info,
    submit,
)

SINFO = """\
cpu*|10|64|(null)
gpu|4|96|gpu:a100:8(S:0-1)
gpu|2|48|gpu:a100:4
small|1|8|gpu:1,mps:100
"""


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """sbatch, srun and sinfo on PATH; sinfo prints ``SINFO``."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (tmp_path / 'sinfo.out').write_text(SINFO)
    scripts = {
        'sinfo': f'#!/bin/sh\ncat {tmp_path / "sinfo.out"}\n',
        'sbatch': '#!/bin/sh\necho "not for tests" >&2; exit 1\n',
        'srun': '#!/bin/sh\nexit 1\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}/usr/bin:/bin')
    return tmp_path


def test_partitions_are_parsed(fake_slurm: Path) -> None:
    found = slurm_info.partitions()
    assert list(found) == ['cpu', 'gpu', 'small']
    assert found['cpu'].default
    assert not found['gpu'].default
    assert [(g.nodes, g.cpus, g.gpus) for g in found['gpu'].groups] == [
        (4, 96, 8),
        (2, 48, 4),
    ]
    assert found['small'].groups[0].gpus == 1
    assert found['gpu'].nodes_fitting(cpus=64, gpus=8) == 4
    assert found['gpu'].nodes_fitting(cpus=8, gpus=4) == 6


def test_unknown_partition_lists_the_real_ones(fake_slurm: Path) -> None:
    with pytest.raises(
        InvalidLaunchError,
        match=r"partition='gpus' does not exist on this cluster \(sinfo "
        r'lists: cpu \(default\), gpu, small\)',
    ):
        slurm_info.check_request(
            LaunchRequest(partition='gpus'), slurm_info.partitions()
        )


def test_gpus_the_partition_does_not_have(fake_slurm: Path) -> None:
    known = slurm_info.partitions()
    with pytest.raises(
        InvalidLaunchError,
        match=r"gpus_per_node=8, but the nodes of partition 'cpu' have at "
        r'most 0 GPU\(s\) \(sinfo GRES: \(null\)\).*partitions with 8 GPUs '
        r'per node: gpu',
    ):
        slurm_info.check_request(LaunchRequest(gpus_per_node=8), known)
    # the default partition is the one checked when none is named
    partition = slurm_info.check_request(
        LaunchRequest(partition='gpu', nodes=4, gpus_per_node=8), known
    )
    assert partition is not None
    assert partition.name == 'gpu'


def test_too_many_nodes_or_cpus(fake_slurm: Path) -> None:
    known = slurm_info.partitions()
    with pytest.raises(
        InvalidLaunchError,
        match=r"nodes=5, but partition 'gpu' has only 4 node\(s\) with at "
        r'least 80 CPUs and 8 GPUs',
    ):
        slurm_info.check_request(
            LaunchRequest(
                partition='gpu', nodes=5, gpus_per_node=8, cpus_per_task=10
            ),
            known,
        )
    with pytest.raises(
        InvalidLaunchError,
        match=r'tasks_per_node=8 x cpus_per_task=16 needs 128 CPUs per node,'
        r" but the nodes of partition 'gpu' have at most 96",
    ):
        slurm_info.check_request(
            LaunchRequest(partition='gpu', gpus_per_node=8, cpus_per_task=16),
            known,
        )


def test_sbatch_refusal_is_reported(fake_slurm: Path) -> None:
    pytest.importorskip('submitit')
    with pytest.raises(LaunchError, match='refused the job') as info:
        submit(print, cluster='slurm', folder=fake_slurm / 'jobs' / '%j')
    assert 'not for tests' in str(info.value)


def test_sinfo_failure_means_slurm_is_down(
    fake_slurm: Path,
) -> None:
    (fake_slurm / 'bin' / 'sinfo').write_text(
        '#!/bin/sh\necho "Unable to contact slurm controller" >&2; exit 1\n'
    )
    with pytest.raises(
        ClusterUnavailableError,
        match=r'SLURM does not answer: .*Unable to contact slurm controller'
        r'.*scontrol ping',
    ):
        slurm_info.partitions()


def test_no_slurm_on_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('PATH', str(tmp_path))
    with pytest.raises(
        ClusterUnavailableError,
        match=r"cluster='slurm' was asked for, but this machine has no "
        r'SLURM: sbatch, srun, sinfo not found on PATH.*'
        r"cluster='local'",
    ):
        submit(print, cluster='slurm', folder=tmp_path / '%j')
    assert not list(tmp_path.iterdir()), 'nothing is written before checks'
