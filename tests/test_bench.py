"""Benchmarks: re-batching fixed-batch ONNX models (checked in ONNX Runtime), interleaved timing,
baseline ratios, JSON/plot output and the ``netdsl bench`` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from netdsl.analysis.bench_report import plot_bench
from netdsl.analysis.rebatch import RebatchError, batch_size_of, rebatch_model
from netdsl.analysis.timing import (
    BenchTable,
    PerBatchModel,
    TorchModel,
    _measure,
    bench_many,
    bench_onnx,
    ratio_interval,
)
from netdsl.commands import bench as bench_cmd


def const(name: str, value: object, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def model_of(nodes: list[onnx.NodeProto], x_shape: list, y_shape: list | None,
             inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def attention_like(batch: int = 2) -> onnx.ModelProto:
    """Conv, then softmax over positions through Reshapes whose constant shapes bake ``batch`` in."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "flat"], ["f"]),
        helper.make_node("Softmax", ["f"], ["s"], axis=2),
        helper.make_node("Reshape", ["s", "map"], ["y"]),
    ]
    inits = [const("w", rng.standard_normal((8, 4, 3, 3))), const("flat", [batch, 8, 36], np.int64),
             const("map", [batch, 8, 6, 6], np.int64)]
    return model_of(nodes, [batch, 4, 6, 6], [batch, 8, 6, 6], inits)


def erf_model() -> onnx.ModelProto:
    """One Erf: as an ONNX file it is checked as it is (netdsl lowers erf only in the specs it compiles)."""
    return model_of([helper.make_node("Erf", ["x"], ["y"])], [2, 4], [2, 4], [])


def batch_mean_model() -> onnx.ModelProto:
    """Subtracts the mean over the batch: samples depend on each other."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
             helper.make_node("Sub", ["x", "m"], ["y"])]
    return model_of(nodes, [2, 3], [2, 3], [])


def pairing_model() -> onnx.ModelProto:
    """Flattens the batch of 2 into one row: runs only at even batch sizes."""
    nodes = [helper.make_node("Reshape", ["x", "row"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["p"]),
             helper.make_node("Reshape", ["p", "back"], ["y"])]
    inits = [const("row", [1, 8], np.int64), const("w", np.eye(8)), const("back", [2, 4], np.int64)]
    return model_of(nodes, [2, 4], [2, 4], inits)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]


def test_rebatch_rewrites_baked_batch_and_matches_per_sample_runs() -> None:
    original = attention_like(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 6, 6)).astype(np.float32)
    expected = np.concatenate([run(original, x[i:i + 2]) for i in range(0, 6, 2)])
    for batch in (1, 3, 6):
        rebatched = rebatch_model(original, batch)
        assert batch_size_of(rebatched) == batch and batch_size_of(original) == 2
        np.testing.assert_allclose(run(rebatched, x[:batch]), expected[:batch], rtol=1e-5, atol=1e-6)


def test_rebatch_failures_are_reported() -> None:
    with pytest.raises(RebatchError, match="not a multiple of the exported batch 2"):
        rebatch_model(pairing_model(), 3)
    result = bench_onnx(batch_mean_model(), batches=[2, 4], warmup=0, runs=2, progress=False)
    at2, at4 = result.rows
    assert at2.error is None and at2.median_ms > 0
    assert at4.median_ms is None and "mixes samples across the batch" in at4.error


def test_squeezed_batch_axis_is_reported() -> None:
    nodes = [helper.make_node("Squeeze", ["x"], ["y"])]
    model = model_of(nodes, [1, 5], None, [])
    (row,) = bench_onnx(model, batches=[3], warmup=0, runs=1, progress=False).rows
    assert "has shape (5,) at the exported batch 1: its first axis is not the batch" in row.error


def test_per_batch_models_are_built_not_rebatched() -> None:
    built: list[int] = []

    def build(batch: int) -> onnx.ModelProto:
        built.append(batch)
        return attention_like(batch)

    result = bench_onnx(PerBatchModel(build), batches=[1, 3], warmup=0, runs=2, progress=False)
    assert built == [1, 3] and all(row.error is None for row in result.rows)


def test_symbolic_batch_runs_without_rewriting() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = model_of(nodes, ["N", 3], ["N", 3], [])
    assert batch_size_of(model) is None
    assert run(rebatch_model(model, 5), -np.ones((5, 3), np.float32)).tolist() == np.zeros((5, 3)).tolist()


def test_bench_many_interleaves_and_takes_ratios() -> None:
    models = {"base": attention_like(2), "other": attention_like(1), "broken": pairing_model()}
    table = bench_many(models, batches=[1, 4], warmup=1, runs=3, baseline="base", progress=False)
    base, other, broken = table.results
    for row in base.rows + other.rows:
        assert row.error is None and row.runs == 3 and 0 < row.median_ms <= row.p90_ms
        assert row.images_per_s == pytest.approx(row.batch * 1000 / row.median_ms)
    assert [r.latency_vs_baseline for r in base.rows] == [1.0, 1.0]
    assert [r.ratio_ci95 for r in base.rows] == [None, None]
    for mine, ref in zip(other.rows, base.rows, strict=True):
        assert mine.latency_vs_baseline == pytest.approx(mine.median_ms / ref.median_ms)
        assert len(mine.times_ms) == 3 and np.median(mine.times_ms) == mine.median_ms
        assert mine.ratio_ci95 == ratio_interval(mine.times_ms, ref.times_ms)
    assert broken.rows[0].error and broken.rows[1].error is None  # batch 1 cannot pair samples; 4 can
    data = json.loads(table.to_json())
    assert set(data) == {"backend", "batches", "warmup", "runs", "baseline", "environment", "models"}
    assert data["environment"]["onnxruntime"] == ort.__version__
    assert set(data["models"][0]["rows"][0]) == {"batch", "median_ms", "p90_ms", "images_per_s", "runs",
                                                 "latency_vs_baseline", "ratio_ci95", "error", "times_ms"}


def test_the_ratio_interval_pairs_runs_of_one_round() -> None:
    # The machine slows down and speeds up from round to round (x1 .. x3); the model always takes
    # 0.8 of the baseline's time in the same round, with 1% jitter of its own.
    rng = np.random.default_rng(5)
    drift = rng.uniform(1, 3, 200)
    base = 50 * drift
    model = 40 * drift * rng.uniform(0.99, 1.01, 200)
    low, high = ratio_interval(model, base)
    assert low <= np.median(model) / np.median(base) <= high
    assert 0.78 < low < high < 0.82  # pairing cancels the drift; the medians alone spread far wider
    unpaired_low, unpaired_high = ratio_interval(model, rng.permutation(base))
    assert unpaired_high - unpaired_low > 5 * (high - low)
    assert ratio_interval(model, base) == (low, high)  # seeded: the same timings give the same interval
    assert ratio_interval(base, base) == (1.0, 1.0)


def test_session_options_stop_spinning_between_interleaved_runs() -> None:
    from netdsl.analysis.timing import session_options

    for threads, expected in ((None, 0), (3, 3)):
        options = session_options(threads)
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
        assert options.intra_op_num_threads == expected
    session = ort.InferenceSession(attention_like(1).SerializeToString(), session_options(2))
    assert session.run(None, {"x": np.ones((1, 4, 6, 6), np.float32)})[0].shape == (1, 8, 6, 6)


def test_measure_rotates_the_order_of_models() -> None:
    calls: list[str] = []

    class Fake:
        def __init__(self, name: str):
            self.name = name

        def run(self) -> None:
            calls.append(self.name)

    class Bar:
        def update(self, *args: object, **kwargs: object) -> None:
            pass

    times = _measure({n: Fake(n) for n in "abc"}, warmup=1, runs=3, tick=lambda: None, bar=Bar(), task=0, batch=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(t) == 3 for t in times.values())


def test_torch_backend_and_argument_errors() -> None:
    torch = pytest.importorskip("torch")
    conv = TorchModel(torch.nn.Conv2d(3, 4, 3), (3, 8, 8))
    table = bench_many({"conv": conv}, batches=[2], warmup=0, runs=2, backend="torch", progress=False)
    assert table.results[0].rows[0].median_ms > 0
    with pytest.raises(ValueError, match="runs with backend 'torch'"):
        bench_many({"conv": conv}, batches=[1], backend="ort", progress=False)
    with pytest.raises(ValueError, match="ONNX models run with 'ort' or 'trt'"):
        bench_many({"m": attention_like()}, batches=[1], backend="torch", progress=False)
    with pytest.raises(ValueError, match="baseline 'nope'"):
        bench_many({"m": attention_like()}, batches=[1], baseline="nope", progress=False)
    with pytest.raises(ValueError, match="backend 'tf'"):
        bench_many({"m": attention_like()}, batches=[1], backend="tf", progress=False)


def test_plot(tmp_path: Path) -> None:
    table = bench_many({"m": attention_like()}, batches=[1, 2], warmup=0, runs=2, progress=False)
    path = tmp_path / "latency.png"
    plot_bench(table, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latency.png"]  # no staging leftovers
    assert isinstance(table, BenchTable)


def run_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    bench_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", *argv])
    return args.run(args)


def test_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b" / "a.onnx"
    b.parent.mkdir()
    onnx.save(attention_like(2), a)
    onnx.save(attention_like(1), b)
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    assert bench_cmd.model_names([str(a), str(b)]) == [f"{tmp_path.name}/a", "b/a"]
    code = run_command(str(a), str(b), "--batch", "1,2", "--runs", "2", "--warmup", "0", "--json", str(out),
                       "--plot", str(plot), "--baseline", f"{tmp_path.name}/a")
    assert code == 0 and plot.is_file()
    data = json.loads(out.read_text())
    assert [m["name"] for m in data["models"]] == [f"{tmp_path.name}/a", "b/a"] and data["batches"] == [1, 2]
    capsys.readouterr()
    assert run_command(str(a), "--batch", "1,x") == 2
    assert "--batch expects" in capsys.readouterr().err
    assert run_command(str(a), "--baseline", "zzz") == 2
    assert run_command(str(tmp_path / "missing.onnx")) == 2
    pairing = tmp_path / "pairing.onnx"
    onnx.save(pairing_model(), pairing)
    assert run_command(str(pairing), "--batch", "1", "--runs", "1", "--warmup", "0") == 2
    assert "not measured: pairing at batch 1" in capsys.readouterr().out


def test_command_falls_back_to_ort_without_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from netdsl.backends.trt_engine import TensorRTUnavailable, require_tensorrt

    try:
        require_tensorrt()
        pytest.skip("TensorRT and a GPU are available here")
    except TensorRTUnavailable:
        pass
    path = tmp_path / "m.onnx"
    onnx.save(attention_like(), path)
    assert run_command(str(path), "--backend", "trt", "--batch", "2", "--runs", "1", "--warmup", "0") == 0
    out = capsys.readouterr().out
    assert "Benchmarking with ONNX Runtime instead" in out and "backend ort" in out


def test_command_compiles_specs_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import netdsl.driver

    calls: list[list[str]] = []

    def onnx_from_args(args: argparse.Namespace, target: str) -> onnx.ModelProto:
        assert target == "onnx" and args.spec == spec
        calls.append(list(args.inputs))
        bound = [b for b in args.inputs if b.startswith("x=")]
        return attention_like(int(bound[0].split("=")[1].split("x")[0]) if bound else 2)

    monkeypatch.setattr(netdsl.driver, "onnx_from_args", onnx_from_args)
    spec = tmp_path / "block.net"
    spec.write_text("# compiled by the stand-in driver hook\n")
    # the stand-in compiles only for timing: no size (which elaborates the spec) and no coverage columns
    assert run_command(str(spec), "--batch", "2,5", "--runs", "1", "--warmup", "0", "--set", "dim=8",
                       "--coverage", "none", "--no-size") == 0
    assert calls == [[], ["x=5x4x6x6"]]  # compiled once as written, then with the input bound to batch 5


# --------------------------------------------------------------------------- size and coverage columns

GELU_SPEC = """
model gelu_net(dim: int = 8) {
    input x: f32[N=1, dim, H=4, W=4]
    output y = gelu(conv(x, dim, kernel=1) as c)
}
"""

# squeeze() drops the batch axis at batch 1 only, like the CSA head: [8] at batch 1, [B, 8] above
SQUEEZE_SPEC = """
model squeeze_net(dim: int = 4) {
    input x: f32[N=1, dim, H=1, W=1]
    y = batchnorm(conv(x, 2 * dim, kernel=1) as c) as bn
    output logits = squeeze(relu(y))
}
"""


def spec_graph(path: Path, inputs: list[str] | None = None):  # noqa: ANN201 - an IR Graph
    from netdsl.driver import load_graph

    return load_graph(path, inputs=inputs)


def test_onnx_size_matches_the_spec_cost_model(write_spec) -> None:  # noqa: ANN001 - conftest fixture
    from netdsl.analysis.model_facts import onnx_size
    from netdsl.backends.onnx_backend import to_onnx
    from netdsl.initializers import initial_weights
    from netdsl.traffic import graph_stats

    path = write_spec(SQUEEZE_SPEC)
    for batch in (1, 3):
        graph = spec_graph(path, [f"x={batch}x4x1x1"])
        expected = graph_stats(graph).to_json()
        size = onnx_size(to_onnx(graph, initial_weights(graph, 0)))
        # the ONNX graph has the same dense ops and trainable parameters (BN statistics are buffers)
        assert (size.params, size.macs) == (expected["params"], expected["macs"]) == (4 * 8 + 8 + 2 * 8, 4 * 8)
        assert size.bytes_per_frame > 0


def test_onnx_size_of_gemm_matmul_and_symbolic_batch() -> None:
    from netdsl.analysis.model_facts import onnx_size

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1), helper.make_node("MatMul", ["h", "m"], ["y"])]
    inits = [const("w", rng.standard_normal((5, 3))), const("m", rng.standard_normal((5, 7)))]
    for batch, frames in (("N", 1), (4, 4)):  # a symbolic batch counts as 1
        size = onnx_size(model_of(nodes, [batch, 3], [batch, 7], inits))
        assert size.params == 15 + 35 and size.macs == 5 * 3 + 7 * 5
        # float32 bytes: the Gemm reads x and w and writes h; the MatMul reads h and m and writes y
        assert size.bytes_per_frame == 4 * (frames * (3 + 5 + 5 + 7) + 15 + 35) // frames


def test_coverage_summary_groups_refused_nodes_with_their_spec_location(write_spec) -> None:  # noqa: ANN001
    from netdsl.analysis.model_facts import summarize_coverage
    from netdsl.backends.onnx_backend import to_onnx
    from netdsl.coverage.checker import check_coverage
    from netdsl.coverage.profile import load_profile
    from netdsl.initializers import initial_weights
    from netdsl.passes.pipeline import run_pipeline

    graph_path = write_spec(GELU_SPEC, "gelu.net")
    graph = run_pipeline(spec_graph(graph_path), "onnx", passes=["gelu_to_erf"]).graph
    report = check_coverage(to_onnx(graph, initial_weights(graph, 0)), load_profile("trt-restricted"))
    summary = summarize_coverage(report)
    refused = report.violations()
    assert not summary.deployable and summary.text == f"{report.total - len(refused)}/{report.total}"
    (group,) = summary.violations  # exact GELU's one Erf
    assert (group.op, group.count) == ("Erf", len(refused)) == ("Erf", 1)
    assert group.first_at.startswith(f"{graph_path}:3:") and group.rewrite and "Erf" in summary.reason_lines()[0]


def test_command_shows_size_and_coverage_per_model(write_spec, tmp_path: Path,  # noqa: ANN001
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from netdsl.traffic import graph_stats

    squeeze, gelu = write_spec(SQUEEZE_SPEC, "squeeze.net"), write_spec(GELU_SPEC, "gelu.net")
    onnx_file, erf_file = tmp_path / "attention.onnx", tmp_path / "erf.onnx"
    onnx.save(attention_like(2), onnx_file)
    onnx.save(erf_model(), erf_file)
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    code = run_command(str(squeeze), str(gelu), str(onnx_file), str(erf_file), "--batch", "1,2", "--runs", "1",
                       "--warmup", "0", "--coverage", "trt-restricted", "--baseline", "squeeze", "--json", str(out),
                       "--plot", str(plot))
    printed = capsys.readouterr().out
    assert code == 0 and plot.is_file()  # squeeze_net ([8] at batch 1, [2, 8] at batch 2) ran at both sizes
    models = {m["name"]: m for m in json.loads(out.read_text())["models"]}
    for name, path in (("squeeze", squeeze), ("gelu", gelu)):
        stats = graph_stats(spec_graph(path)).to_json()
        assert [models[name][k] for k in ("params", "macs", "bytes_per_frame")] == \
            [stats["params"], stats["macs"], stats["bytes_per_frame"]]
    assert models["attention"]["macs"] == 8 * 36 * 4 * 9 and models["attention"]["params"] == 8 * 4 * 9
    coverage = {name: m["coverage"]["trt-restricted"] for name, m in models.items()}
    assert coverage["squeeze"]["text"] == "100%" and coverage["squeeze"]["deployable"]
    # The spec's exact GELU is lowered for trt-restricted (erf_decompose); the ONNX file's Erf is checked as it is.
    assert coverage["gelu"]["text"] == "100%" and coverage["gelu"]["deployable"]
    assert not coverage["erf"]["deployable"] and coverage["erf"]["violations"][0]["op"] == "Erf"
    assert coverage["erf"]["text"] == f"{coverage['erf']['covered']}/{coverage['erf']['total']}"
    assert "erf is not deployable under trt-restricted" in printed and "x Erf" in printed
    assert "gelu is not deployable" not in printed
    assert "squeeze is not deployable" not in printed
    assert any("params" in line and "trt-restricted" in line for line in printed.splitlines())  # the header


TOKEN_MEAN_SPEC = """
model token_mean(tokens: int = 2, dim: int = 2048) {
    input x: f32[N=1, tokens, dim]
    output y = linear(reduce_mean(x, [1]), 2 * dim) as fc
}
"""


@pytest.mark.parametrize("tokens, shown", [(2, False), (49, True)])
def test_command_shows_compiled_macs_only_where_the_table_would_differ(
        write_spec, tmp_path: Path, capsys: pytest.CaptureFixture[str], tokens: int, shown: bool) -> None:  # noqa: ANN001
    # The mean over the tokens becomes a matmul (reduce_to_matmul): tokens x 2048 MACs more. Two tokens add
    # 4096 to 8,388,608 (8.39M either way); 49 add 100,352 (8.49M).
    spec = write_spec(TOKEN_MEAN_SPEC, "tokens.net")
    out = tmp_path / "bench.json"
    assert run_command(str(spec), "--batch", "1", "--runs", "1", "--warmup", "0", "--coverage", "none",
                       "--set", f"tokens={tokens}", "--json", str(out)) == 0
    (model,) = json.loads(out.read_text())["models"]
    assert (model["macs"], model["macs_compiled"]) == (2048 * 4096, 2048 * 4096 + tokens * 2048)
    assert ("compiled" in capsys.readouterr().out) == shown


UPSAMPLE_SPEC = """
model upsample_net(dim: int = 16) {
    input x: f32[N=1, dim, H=4, W=4]
    output y = conv(resize(x, scale=[4.0, 4.0]), dim // 2, kernel=1) as c
}
"""


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_command_shows_the_macs_the_target_runs(write_spec, tmp_path: Path, backend: str,  # noqa: ANN001
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # The onnx pipeline runs the 1x1 conv on the 4x4 side of the resize (conv_before_resize); the torch
    # target keeps the spec's order, so only the ONNX Runtime row shows compiled MACs.
    spec = write_spec(UPSAMPLE_SPEC, "upsample.net")
    out = tmp_path / "bench.json"
    assert run_command(str(spec), "--batch", "1", "--runs", "1", "--warmup", "0", "--coverage", "none",
                       "--backend", backend, "--json", str(out)) == 0
    (model,) = json.loads(out.read_text())["models"]
    written, on_grid = 16 * 16 * 16 * 8, 4 * 4 * 16 * 8
    assert model["macs"] == written
    assert model["macs_compiled"] == (on_grid if backend == "ort" else written)
    assert ("compiled" in capsys.readouterr().out) == (backend == "ort")


def test_command_coverage_flags(write_spec, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    spec = write_spec(SQUEEZE_SPEC)
    assert run_command(str(spec), "--batch", "1", "--runs", "1", "--warmup", "0", "--coverage", "nope") == 2
    assert "--coverage" in capsys.readouterr().err
    assert run_command(str(spec), "--batch", "1", "--runs", "1", "--warmup", "0", "--coverage", "none",
                       "--no-size") == 0
    header = capsys.readouterr().out
    assert "trt-restricted" not in header and "params" not in header and "batch 1" in header
