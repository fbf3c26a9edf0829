"""--ray (issue 21): the job spread over Ray replicas writes what one process writes.

A local Ray cluster of 2 CPU workers on 3 short LibriSpeech clips and a corrupt file: the bundled
model (-p fast) through the real program, then the tiny random checkpoint through the library with
a replica whose process dies on its first file. Without Ray, --ray is one line and exit 1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from whisfusion_cli.cli import app
from whisfusion_cli.cluster import RAY_MISSING, Cluster, ClusterOptions, ModelSpec, Replica

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='Ray not installed (pip install -e ".[test]")')
FORMATS = ("txt", "srt", "vtt", "json", "tsv")
THREADS = max(1, (os.cpu_count() or 1) // 2)  # what each of 2 local CPU replicas gets


def _whisfusion(*args: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))  # the single run computes as a replica does
    return subprocess.run([sys.executable, "-m", "whisfusion_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False, env=env)


def _outputs(folder: Path) -> dict[str, bytes]:
    """Every output by name; json without its timings (ffmpeg's load time differs run to run)."""
    files = {}
    for p in sorted(folder.iterdir()):
        data = p.read_bytes()
        if p.suffix == ".json":
            record = json.loads(data)
            record.pop("timings")
            data = json.dumps(record).encode()
        files[p.name] = data
    return files


@pytest.fixture(scope="module")
def clip_folder(real_clips, tmp_path_factory) -> Path:
    """The three shortest shared clips (2-5 s) and a file ffmpeg cannot read."""
    folder = tmp_path_factory.mktemp("in")
    for path, _ in real_clips[1:]:
        shutil.copy(path, folder / path.name)
    (folder / "broken.flac").write_bytes(b"not audio " * 500)
    return folder


@pytest.fixture(scope="module")
def runs(clip_folder, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """The folder transcribed by one process and by `--ray local --workers 2`, one window per batch
    (batches packed from several files change the confidences' last digits)."""
    out = tmp_path_factory.mktemp("out")
    common = ("-f", "all", "-p", "fast", "--batch-size", "1")
    single = _whisfusion("transcribe", clip_folder, "-o", out / "single", *common)
    ray = _whisfusion("transcribe", clip_folder, "-o", out / "ray", *common, "--ray", "local",
                      "--workers", "2")
    return {"single": (single, out / "single"), "ray": (ray, out / "ray")}


@needs_ray
def test_ray_local_writes_what_one_process_writes(runs) -> None:
    (single, single_out), (ray, ray_out) = runs["single"], runs["ray"]
    assert single.returncode == ray.returncode == 1, ray.stderr  # the corrupt file
    outputs = _outputs(ray_out)
    assert len(outputs) == 3 * len(FORMATS)
    assert outputs == _outputs(single_out)
    texts = " ".join(v.decode() for k, v in outputs.items() if k.endswith(".txt")).lower()
    assert "could wait no longer" in texts


@needs_ray
def test_a_file_failing_in_a_replica_is_one_line_and_the_rest_are_written(runs, clip_folder) -> None:
    (single, _), (ray, ray_out) = runs["single"], runs["ray"]
    assert "Traceback" not in ray.stderr
    failed = [ln for ln in ray.stderr.splitlines() if ln.startswith("failed:")]
    assert failed == [ln for ln in single.stderr.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 1 and str(clip_folder / "broken.flac") in failed[0]
    assert {p.stem for p in ray_out.iterdir()} == {p.stem for p in clip_folder.glob("1089-*.flac")}


class _DiesOnFirstTry(Replica):
    """A replica whose process exits on a die_* file the first time any replica is given it."""

    def transcribe(self, job, options):  # type: ignore[no-untyped-def]
        marker = job.source.with_suffix(".died")
        if job.source.name.startswith("die_") and not marker.exists():
            marker.touch()
            os._exit(1)
        return super().transcribe(job, options)


@needs_ray
def test_a_lost_replica_s_file_is_retried_and_every_file_written(real_clips, tiny_ckpt, tmp_path) -> None:
    import ray

    from whisfusion_cli.transcribe import FileDone, FileFailed, TranscribeOptions, find_jobs

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # replicas cannot import this test
    folder = tmp_path / "in"
    folder.mkdir()
    for i, (path, _) in enumerate(real_clips[1:]):
        shutil.copy(path, folder / f"{'die_' if i == 0 else ''}{path.name}")
    jobs, _ = find_jobs([folder], tmp_path / "out")
    spec = ModelSpec(str(tiny_ckpt), "cpu", preset="fast")
    with Cluster(ClusterOptions("local", workers=2), spec, replica=_DiesOnFirstTry) as cluster:
        events = list(cluster.transcribe(jobs, TranscribeOptions(("txt", "json"), batch_size=1)))
    assert not [e for e in events if isinstance(e, FileFailed)]
    assert {e.job for e in events if isinstance(e, FileDone)} == set(jobs)  # as given, not absolute
    assert next(folder.glob("*.died"))  # the process did die
    assert {p.name for p in (tmp_path / "out").iterdir()} == {f"{j.stem.name}.{f}" for j in jobs
                                                               for f in ("txt", "json")}


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_tokenizer, tmp_path_factory) -> Path:
    from test_cli import _tiny_checkpoint

    return _tiny_checkpoint(tiny_tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny")


def test_without_ray_the_flag_is_one_line_and_exit_1(real_clips, tiny_ckpt, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = CliRunner().invoke(app, ["transcribe", str(real_clips[2][0]), "-m", str(tiny_ckpt), "-o",
                                      str(tmp_path), "--ray", "local", "-q"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.stderr == f"error: {RAY_MISSING}\n"
    assert list(tmp_path.iterdir()) == []


def test_workers_without_ray_is_a_usage_error(real_clips) -> None:
    result = CliRunner().invoke(app, ["transcribe", str(real_clips[2][0]), "--workers", "2"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --workers needs --ray"), result.output
