"""The serving loop (`--serve`) end to end on CPU with tiny models: NVTX steps and scopes, the
`serve` metadata and its invariants, tokens equal to the stage-by-stage run, and per-step
`FlopCounterMode` against the analytic FLOPs of each step from its recorded (query_len,
context_len), computed here from `flops.decoders`' per-token parameters and pair FLOPs.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("transformers", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("nvtx", reason="needs the runner extra: pip install -e '.[runner]'")
pytest.importorskip("PIL", reason="needs the runner extra: pip install -e '.[runner]'")
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from llm_perf_opt.errors import MetaError
from llm_perf_opt.flops import analytic, decoders
from llm_perf_opt.flops.dsocr_decoder import text_decoder_spec
from llm_perf_opt.flops.hf import DecoderSpec, hf_model_from_dict
from llm_perf_opt.inputs.run_meta import check_serve, parse_meta
from llm_perf_opt.runner import serve
from llm_perf_opt.runner.cli import main
from llm_perf_opt.runner.models import build_model
from llm_perf_opt.runner.nvtx_marks import Annotator
from llm_perf_opt.runner.nvtx_stages import prepare_image
from llm_perf_opt.runner.pipeline import run_image
from llm_perf_opt.runner.preprocess import synthetic_page
from llm_perf_opt.runner.schedule import Entry, Request, Scheduler
from llm_perf_opt.schemas import check_run_meta
from llm_perf_opt.vocab import FAMILIES, SERVE_SCOPES
from tests.helpers.nvtx import DOMAIN, NvtxRecorder
from tests.helpers.paths import DATA

torch.set_num_threads(1)
HF_CONFIGS = DATA / "hf_configs"
NAME = re.compile(r"^execute_context_(\d+)\((\d+)\)_generation_(\d+)\((\d+)\)$")
TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
}
# FlopCounterMode has no formula for the CPU flash kernel: torch's own SDPA formula for it.
CPU_SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda q, k, v, *args, out_shape=None, **kw: sdpa_flop_count(q, k, v)
    )
}


def tiny_config(tmp_path: Path, source: str, **extra: Any) -> Path:
    """A published config (tests/data/hf_configs) shrunk to CPU size, written to tmp_path."""
    data = {**json.loads((HF_CONFIGS / source).read_text()), **TINY, **extra}
    path = tmp_path / source
    path.write_text(json.dumps(data))
    return path


def run_cli(out: Path, *args: str) -> dict[str, Any]:
    assert main(["--device", "cpu", "--serve", "--out", str(out), *args]) == 0
    meta: dict[str, Any] = json.loads((out / "run.meta.json").read_text())
    return meta


def assert_schedule_truth(meta: dict[str, Any]) -> None:
    """What the `serve` block promises, re-derived here from its own entries."""
    serve_block = meta["serve"]
    budget, limit = serve_block["token_budget"], serve_block["max_running"]
    requests = {r["id"]: r for r in serve_block["requests"]}
    done = dict.fromkeys(requests, 0)
    produced = dict.fromkeys(requests, 0)
    encoded = dict.fromkeys(requests, 0)
    spans: dict[int, list[int]] = {}
    for index, step in enumerate(serve_block["steps"]):
        assert step["index"] == index and step["wall_s"] > 0
        entries = step["entries"]
        assert sum(e["query_len"] for e in entries) <= budget
        match = NAME.match(step["name"])
        assert match is not None, step["name"]
        ctx = [e["query_len"] for e in entries if e["phase"] == "context"]
        gen = [e["query_len"] for e in entries if e["phase"] == "generation"]
        assert tuple(map(int, match.groups())) == (len(ctx), sum(ctx), len(gen), sum(gen))
        for e in entries:
            rid, request = e["request"], requests[e["request"]]
            assert request["arrival_step"] <= index
            assert e["context_len"] == done[rid]
            spans.setdefault(rid, []).append(index)
            if e["phase"] == "context":
                assert done[rid] + e["query_len"] <= request["prompt_len"]
                assert e["encoder_images"] == (
                    1 if done[rid] == 0 and request["image_index"] is not None else 0
                )
            else:
                assert done[rid] >= request["prompt_len"] and e["query_len"] == 1
            encoded[rid] += e["encoder_images"]
            done[rid] += e["query_len"]
            if done[rid] >= request["prompt_len"]:
                produced[rid] += 1
        if limit is not None:
            assert sum(s[0] <= index <= s[-1] for s in spans.values()) <= limit
    for rid, request in requests.items():
        new = request["max_new_tokens"]
        assert produced[rid] == request["generated_tokens"] == new
        assert done[rid] == request["prompt_len"] + new - 1  # the prompt exactly once
        assert encoded[rid] == (request["image_index"] is not None)


def test_ocr_pages_serve_with_named_steps_and_scopes(
    tmp_path: Path, recorder: NvtxRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder_inside: list[list[str]] = []
    real = serve.vision_stage

    def spy(built: Any, page: Any) -> torch.Tensor:
        encoder_inside.append([node.name for node in recorder.stack])
        return real(built, page)

    monkeypatch.setattr(serve, "vision_stage", spy)
    meta = run_cli(
        tmp_path,
        *("--tiny", "--num-images", "3", "--max-new-tokens", "3"),
        *("--token-budget", "12", "--arrival-every", "1", "--max-running", "2"),
        *("--warmup-rounds", "1", "--warmup-max-new-tokens", "2"),
    )
    check_run_meta(meta)
    parsed = parse_meta(meta, "test")
    assert parsed.serve is not None and parsed.images == () and parsed.mode == "base"
    assert_schedule_truth(meta)
    steps = meta["serve"]["steps"]
    lp = meta["serve"]["images"][0]["prefill_len"]
    assert all(r["prompt_len"] == lp > 12 for r in meta["serve"]["requests"])  # chunked
    assert any(e["context_len"] > 0 for s in steps for e in s["entries"] if e["phase"] == "context")
    counts = [NAME.match(s["name"]).groups() for s in steps]  # type: ignore[union-attr]
    assert any(ctx != "0" and gen != "0" for ctx, _, gen, _ in counts)  # a mixed step
    # NVTX: one warmup range holding no named step, then one range per step with vLLM's scopes
    assert recorder.domains == {DOMAIN} and recorder.stack == []
    warmup, *measured = recorder.roots
    assert (warmup.name, warmup.children) == ("warmup", [])
    assert [n.name for n in measured] == [s["name"] for s in steps]
    for node in measured:
        assert node.names() == list(SERVE_SCOPES)
        assert all(scope.children == [] for scope in node.children)
    assert recorder.events[-1] == "mark" and [json.loads(m) for m in recorder.marks] == [meta]
    # the vision encoder ran inside preprocess: 3 warmup pages unnamed, 3 measured pages named
    assert encoder_inside[:3] == [["warmup"]] * 3
    assert [stack[1:] for stack in encoder_inside[3:]] == [[SERVE_SCOPES[0]]] * 3


MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}


@pytest.mark.parametrize(
    ("source", "extra", "experts"),
    [
        ("llama-3.2-1b.json", {}, "eager"),
        ("qwen3-8b.json", {}, "eager"),
        ("qwen2.5-7b.json", {"sliding_window": None}, "eager"),
        ("qwen3-30b-a3b.json", MOE, "grouped_mm"),
    ],
)
def test_a_decoder_config_serves_random_text_prompts(
    tmp_path: Path, recorder: NvtxRecorder, source: str, extra: dict[str, Any], experts: str
) -> None:
    config = tiny_config(tmp_path, source, **extra)
    meta = run_cli(
        tmp_path / "out",
        *("--decoder-config", str(config), "--num-requests", "4", "--prompt-len", "20"),
        *("--token-budget", "16", "--arrival-every", "1", "--max-new-tokens", "4"),
        *("--experts-implementation", experts),
    )
    assert meta["model"]["experts_implementation"] == experts
    parsed = parse_meta(meta, "test")
    assert parsed.family == "hf-decoder" and parsed.mode is None and parsed.serve is not None
    assert meta["model"]["config"]["model_type"] == json.loads(config.read_text())["model_type"]
    assert meta["serve"]["images"] == [] and meta["images"] == []
    assert [r["prompt_len"] for r in meta["serve"]["requests"]] == [20] * 4
    assert all(r["image_index"] is None for r in meta["serve"]["requests"])
    assert_schedule_truth(meta)
    assert [n.name for n in recorder.roots] == [s["name"] for s in meta["serve"]["steps"]]


@pytest.mark.parametrize("family", FAMILIES)
def test_served_tokens_equal_the_stage_by_stage_run(family: str) -> None:
    """Chunked prefill, packed batches and per-request attention compute what generate does."""
    built = build_model(family, tiny=True, dtype=torch.float32)
    pages = [prepare_image(built, synthetic_page(i), "base") for i in range(3)]
    expected = [
        list(run_image(built, page, 5, Annotator(False), i, lambda: None).token_ids)
        for i, page in enumerate(pages)
    ]
    requests = [Request(i, p.prefill_len, i, 5, i) for i, p in enumerate(pages)]
    scheduler = Scheduler(requests, 7, 2)
    records = serve.run_schedule(
        serve.Engine(serve.ocr_target(built, pages), lambda: None), scheduler, Annotator(False)
    )
    got: dict[int, list[int]] = {i: [] for i in range(3)}
    done = dict.fromkeys(range(3), 0)
    for record in records:
        for entry, token in zip(record.entries, record.tokens, strict=True):
            done[entry.request] += entry.query_len
            if done[entry.request] >= requests[entry.request].prompt_len:
                got[entry.request].append(token)
    assert [got[i] for i in range(3)] == expected


def dense_step_flops(spec: DecoderSpec, entries: tuple[Entry, ...]) -> int:
    """Decoder FLOPs of a step as dense kernels (and FlopCounterMode) count them: 2 · per-token
    parameters per scheduled token, lm_head once per request (its last token), and every query
    of a request against all of its c + q keys, per layer (full attention)."""
    params = decoders.per_token_params(spec)
    lm_head = params.pop("text.lm_head")
    tokens = sum(e.query_len for e in entries)
    pairs = sum(e.query_len * (e.context_len + e.query_len) for e in entries)
    layers = len(spec.layers)
    return (
        2 * sum(params.values()) * tokens
        + 2 * lm_head * len(entries)
        + (decoders.pair_flops(spec) * layers * pairs)
    )


def _counted_steps(
    engine: serve.Engine, scheduler: Scheduler
) -> list[tuple[tuple[Entry, ...], int]]:
    out = []
    while not scheduler.done:
        entries = scheduler.next_step()
        with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
            engine.step(scheduler.step_index, entries, scheduler.arrived, Annotator(False))
        scheduler.finish_step(entries)
        out.append((entries, int(counter.get_total_flops())))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_flop_counter_mode_agrees_with_the_step_flops_on_ocr_steps(family: str) -> None:
    built = build_model(family, tiny=True, dtype=torch.float32)
    pages = [prepare_image(built, synthetic_page(i), "base") for i in range(2)]
    requests = [Request(i, p.prefill_len, i, 3, i) for i, p in enumerate(pages)]
    engine = serve.Engine(serve.ocr_target(built, pages), lambda: None)
    spec = text_decoder_spec(built.config.text)
    counted = _counted_steps(engine, Scheduler(requests, 16, None))
    kinds = set()
    for entries, flops in counted:
        # FlopCounterMode counts the dense square of every attention call ("full")
        expected = dense_step_flops(spec, entries) + sum(
            analytic.vision_flops(built.config, pages[e.request].layout, "full").total_flops
            for e in entries
            if e.encoder_images
        )
        assert abs(flops / expected - 1) < 0.01, (entries, flops, expected)
        kinds.add(tuple(sorted({(e.phase, e.context_len > 0) for e in entries})))
    # prefill from scratch, a chunk after cached context, generation, and mixed steps were seen
    seen = {pair for kind in kinds for pair in kind}
    assert {("context", False), ("context", True), ("generation", True)} <= seen
    assert any(len(kind) > 1 for kind in kinds)


@pytest.mark.parametrize(
    ("source", "extra"), [("llama-3.2-1b.json", {}), ("qwen3-30b-a3b.json", MOE)]
)
def test_flop_counter_mode_agrees_with_the_step_flops_on_hf_decoders(
    tmp_path: Path, source: str, extra: dict[str, Any]
) -> None:
    path = tiny_config(tmp_path, source, **extra)
    built = serve.build_decoder(str(path), torch.float32, torch.device("cpu"), 0)
    prompts = serve.random_prompts(3, 20, TINY["vocab_size"], 0)
    engine = serve.Engine(serve.text_target(built, prompts), lambda: None)
    spec = hf_model_from_dict(json.loads(path.read_text()), str(path)).text
    assert spec is not None
    requests = [Request(i, 20, i, 3) for i in range(3)]
    for entries, flops in _counted_steps(engine, Scheduler(requests, 16, None)):
        expected = dense_step_flops(spec, entries)
        assert abs(flops / expected - 1) < 0.01, (entries, flops, expected)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("served")
    args = ["--tiny", "--device", "cpu", "--serve", "--no-nvtx", "--out", str(out)]
    args += ["--num-images", "2", "--max-new-tokens", "3", "--token-budget", "20"]
    assert main([*args, "--max-running", "2", "--arrival-every", "1"]) == 0
    data: dict[str, Any] = json.loads((out / "run.meta.json").read_text())
    return data


def _entry(meta: dict[str, Any], step: int, i: int = 0) -> dict[str, Any]:
    entry: dict[str, Any] = meta["serve"]["steps"][step]["entries"][i]
    return entry


BROKEN = {
    "renamed step": lambda m: m["serve"]["steps"][0].update(
        name="execute_context_9(9)_generation_0(0)"
    ),
    "over the budget": lambda m: m["serve"].update(token_budget=1),
    "chunk gap": lambda m: _entry(m, 1).update(context_len=_entry(m, 1)["context_len"] + 1),
    "token count": lambda m: m["serve"]["requests"][0].update(generated_tokens=1),
    "encoder twice": lambda m: _entry(m, 1).update(encoder_images=1),
    "before arrival": lambda m: m["serve"]["requests"][1].update(arrival_step=99),
    "too many running": lambda m: m["serve"].update(max_running=1),
    "step numbering": lambda m: m["serve"]["steps"][1].update(index=5),
    "unknown request": lambda m: _entry(m, 0).update(request=7),
}


def test_the_served_metadata_is_consistent(served: dict[str, Any]) -> None:
    check_serve(served)
    assert_schedule_truth(served)


@pytest.mark.parametrize("name", list(BROKEN))
def test_an_inconsistent_schedule_is_refused(served: dict[str, Any], name: str) -> None:
    doc = copy.deepcopy(served)
    BROKEN[name](doc)
    with pytest.raises(MetaError):
        check_serve(doc, "test")
    with pytest.raises(MetaError):
        parse_meta(doc, "test")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--decoder-config", "x.json"], "add --serve"),
        (["--serve", "--cuda-graphs", "--experts-implementation", "grouped_mm"], "cuda_graphs"),
        (["--serve", "--token-budget", "0"], "token_budget"),
        (["--serve", "--decoder-config", "gemma"], "model_type 'gemma'"),
        (["--serve", "--decoder-config", "mistral"], "sliding-window"),
        (["--serve", "--decoder-config", "x.json", "--mode", "gundam"], "mode apply to"),
        (["--serve", "--model", "deepseek-ocr2", "--mode", "small"], "small"),
    ],
)
def test_bad_serve_settings_fail_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    sources = {"gemma": "gemma-2b.json", "mistral": "mistral-7b-v0.1.json"}
    args = [str(tiny_config(tmp_path, sources[a])) if a in sources else a for a in args]
    assert main(["--device", "cpu", "--no-nvtx", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "\n" not in err and message in err, err


def test_the_runner_only_keys_of_serve_are_optional(served: dict[str, Any]) -> None:
    doc = copy.deepcopy(served)
    for key in ("arrival_every", "batching", "images"):
        del doc["serve"][key]
    check_run_meta(doc, "test")
    assert parse_meta(doc, "test").serve == parse_meta(served, "test").serve


def test_serve_settings_come_from_the_yaml_file_too(tmp_path: Path) -> None:
    settings = tmp_path / "run.yaml"
    settings.write_text(
        "serve: true\ntiny: true\nnum_images: 2\nmax_new_tokens: 2\ntoken_budget: 10\n"
        "max_running: 1\narrival_every: 3\nnvtx: false\n"
    )
    out = tmp_path / "out"
    assert main(["--config", str(settings), "--device", "cpu", "--out", str(out)]) == 0
    meta = json.loads((out / "run.meta.json").read_text())
    serve_block = meta["serve"]
    assert (serve_block["token_budget"], serve_block["max_running"]) == (10, 1)
    assert [r["arrival_step"] for r in serve_block["requests"]] == [0, 3]
    assert all(sum(e["query_len"] for e in s["entries"]) <= 10 for s in serve_block["steps"])
    assert all(len(s["entries"]) == 1 for s in serve_block["steps"])  # one request at a time
