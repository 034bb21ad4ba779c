"""The benchmark scripts record what their figures were measured on (bench/ is not part of the package)."""

import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_environment_record_names_the_torch_build_cpu_threads_and_load():
    sys.path.insert(0, str(BENCH))
    try:
        from _environment import environment
    finally:
        sys.path.remove(str(BENCH))
    record = environment(3, load_before=0.5)
    assert record["torch"] == torch.__version__
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["threads"] == 3 and record["load_avg_1min_before"] == 0.5
    assert len(record["load_avg_1_5_15min"]) == 3
    assert environment()["threads"] == torch.get_num_threads()


def test_every_bench_script_writes_the_environment_record():
    scripts = sorted(BENCH.glob("bench_*.py"))
    assert len(scripts) >= 8
    missing = [p.name for p in scripts if "environment(" not in p.read_text()]
    assert not missing, f"bench scripts without an environment record: {missing}"
