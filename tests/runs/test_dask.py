"""A real dask.distributed LocalCluster (two worker processes) gives the local run's results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_perf_opt.analysis import AnalyzeOptions
from llm_perf_opt.batch import fanout
from llm_perf_opt.batch.fanout import DaskError, analyze_many
from llm_perf_opt.batch.resultsdb import VOLATILE_COLUMNS, ResultsDb
from llm_perf_opt.cli.analyze import main

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


def test_dask_results_equal_the_local_run(
    sweep: Path, scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(sweep)  # relative paths: the workers get absolute ones, results do not
    paths = [Path("g1.sqlite"), Path("g2.sqlite"), Path("g3.sqlite"), Path("bad.sqlite")]
    local = analyze_many(paths, AnalyzeOptions(), jobs=1)
    remote = analyze_many(paths, AnalyzeOptions(), dask_address=scheduler)
    assert [r.trace for r in remote] == [str(p) for p in paths]
    assert [r.ok for r in remote] == [True, True, True, False]
    assert remote[3].error is not None and "cannot be read" in remote[3].error
    for here, there in zip(local[:3], remote[:3], strict=True):
        assert there.report is not None and there.report.trace_path == here.trace
        mine, theirs = here.rows().tables, there.rows().tables
        for table in ("stages", "instances", "decode_steps", "top_kernels"):
            assert theirs[table] == mine[table]
        steady = [{k: v for k, v in r.items() if k not in VOLATILE_COLUMNS} for r in (
            mine["runs"][0], theirs["runs"][0])]  # fmt: skip
        assert steady[0] == steady[1] and steady[0]["trace_path"] == here.trace


def test_cli_on_dask_writes_the_same_database(sweep: Path, scheduler: str, tmp_path: Path) -> None:
    local, remote = tmp_path / "local.sqlite", tmp_path / "dask.sqlite"
    runner = CliRunner()
    assert runner.invoke(main, [str(sweep), "--db", str(local), "-j", "1"]).exit_code == 2
    result = runner.invoke(main, [str(sweep), "--db", str(remote)],
                           env={"DASK_SCHEDULER_ADDRESS": scheduler})  # fmt: skip
    assert result.exit_code == 2, result.output
    with ResultsDb(local) as a, ResultsDb(remote) as b:
        assert a.dump() == b.dump()
        assert len(a.run_ids()) == 3


def test_unreachable_scheduler_is_a_dask_error(
    good_traces: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "DASK_CONNECT_TIMEOUT_S", 2)
    with pytest.raises(DaskError, match="no Dask scheduler answers"):
        analyze_many(good_traces, AnalyzeOptions(), dask_address="tcp://127.0.0.1:9")
