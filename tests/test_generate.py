"""Generation with the KV cache: cached decoding equals the full forward pass, batches equal
prompts alone, sampling filters, stops, sharding, sources and `jaxlm generate`."""

import io
import json
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.generate import (
    DecodeEngine,
    Generator,
    Sampling,
    left_pad,
    load_source,
    place_params,
    sample_logits,
)
from jaxlm.generate.sampling import DEFAULT, GREEDY, nucleus_threshold
from jaxlm.models import DecoderLM
from jaxlm.runtime.hardware import resolve_config
from jaxlm.sharding import logical_rules, make_mesh

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "pretrain" / "tiny.yaml")
VOCAB, CONTEXT = 128, 32
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [3]]  # lengths 3, 10, 1


def tiny_config(mesh=(1, 1, 1), **model):
    d, f, t = mesh
    overrides = {"d_model": 32, "n_heads": 4, "n_layers": 2, "vocab_size": VOCAB,
                 "max_seq_len": CONTEXT, "dtype": "float32", **model}
    return resolve_config(load_config(None, [f"model.{k}={v}" for k, v in overrides.items()] + [
        f"data.seq_len={CONTEXT}", f"mesh.data={d}", f"mesh.fsdp={f}", f"mesh.tensor={t}",
        f"train.global_batch={d * f}"]))


def engine_for(cfg, mesh=(1, 1, 1)):
    """A decode engine on the first d*f*t devices and the model's random parameters there."""
    device_mesh = make_mesh(cfg, jax.devices()[: int(np.prod(mesh))])
    rules = logical_rules(cfg.mesh)
    host = nn.unbox(DecoderLM(cfg.model).init(jax.random.PRNGKey(0),
                                              jnp.zeros((1, 4), jnp.int32))["params"])
    engine = DecodeEngine(cfg.model, device_mesh, rules)
    return engine, place_params(cfg.model, host, device_mesh, rules), host


def full_forward(cfg):
    """Logits of the last token of a sequence, recomputed from scratch: the sequence sits at
    the start of a fixed (1, CONTEXT) buffer, whose later slots a causal model ignores."""
    apply = jax.jit(DecoderLM(cfg.model).apply)

    def last_logits(host, seq):
        buf = np.zeros((1, CONTEXT), np.int32)
        buf[0, :len(seq)] = seq
        return np.asarray(apply({"params": host}, jnp.asarray(buf))[0, len(seq) - 1])

    return last_logits


MODELS = {
    "gpt2": {"family": "gpt2"},
    "llama_gqa": {"family": "llama", "n_kv_heads": 2},
    "llama_gqa_scan": {"family": "llama", "n_kv_heads": 2, "scan_layers": "true"},
}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n.endswith("_scan") else n for n in MODELS])
def test_cached_decoding_equals_full_forward_at_every_step(name):
    cfg = tiny_config(**MODELS[name])
    engine, params, host = engine_for(cfg)
    reference = full_forward(cfg)
    n_new = 8
    batch = left_pad(PROMPTS, engine.row_multiple)
    logits, cache = engine.prefill(params, batch, n_new)
    seqs, worst = [list(p) for p in PROMPTS], 0.0
    for i in range(n_new):
        logits = np.asarray(logits)
        for row, seq in enumerate(seqs):
            ref = reference(host, seq)
            worst = max(worst, float(np.abs(logits[row] - ref).max()))
            assert int(np.argmax(logits[row])) == int(np.argmax(ref))
            seq.append(int(np.argmax(ref)))
        token = np.argmax(logits, axis=-1)
        logits, cache = engine.step(params, cache, token, batch.lengths + i)
    print(f"{name}: max |cached - full| logit difference over {n_new} steps: {worst:.2e}")
    assert worst <= 1e-4
    rows = engine.generate(params, PROMPTS, n_new, GREEDY)  # the while_loop path
    assert [new for new, _ in rows] == [s[len(p):] for s, p in zip(seqs, PROMPTS, strict=True)]
    assert list(engine.stream(params, PROMPTS[1], n_new, GREEDY)) == rows[1][0]


@pytest.fixture(scope="module")
def llama():
    cfg = tiny_config(**MODELS["llama_gqa"])
    engine, params, _ = engine_for(cfg)
    return cfg, engine, params


def test_a_batch_gives_each_prompt_its_tokens_alone(llama):
    _, engine, params = llama
    together = engine.generate(params, PROMPTS, 6, GREEDY)
    assert together == [engine.generate(params, [p], 6, GREEDY)[0] for p in PROMPTS]


def test_top_k_1_and_a_tiny_top_p_are_greedy(llama):
    _, engine, params = llama
    greedy = engine.generate(params, PROMPTS, 6, GREEDY)
    assert engine.generate(params, PROMPTS, 6, Sampling(1.0, top_k=1), seed=3) == greedy
    assert engine.generate(params, PROMPTS, 6, Sampling(1.0, top_p=1e-6), seed=3) == greedy
    hot = Sampling(1.0, top_k=None)
    sampled = engine.generate(params, PROMPTS, 6, hot, seed=3)
    assert sampled != greedy  # temperature 1 over 128 tokens: not the argmax every time
    assert engine.generate(params, PROMPTS, 6, hot, seed=3) == sampled  # the seed
    # streaming draws token i with the same key as the decode loop
    alone = engine.generate(params, [PROMPTS[0]], 6, hot, seed=3)[0][0]
    assert list(engine.stream(params, PROMPTS[0], 6, hot, seed=3)) == alone


def test_sampling_filters_keep_only_the_allowed_tokens():
    logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))  # ranks: 1, 3, 2, 0
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)

    def drawn(**kw):
        sampling = Sampling(1.0, **{"top_k": None, **kw})
        return set(np.asarray(jax.vmap(lambda k: sample_logits(logits, k, sampling))(keys))
                   .ravel().tolist())

    assert drawn() == {0, 1, 2, 3}
    assert drawn(top_k=2) == {1, 3}
    assert drawn(top_p=0.7) == {1, 3}  # 0.5 < 0.7, then 0.5 + 0.3 reaches it
    assert drawn(top_p=0.81) == {1, 3, 2}
    assert drawn(top_k=3, top_p=0.99) == {1, 3, 2}
    assert drawn(top_p=0.5) == {1}


def test_nucleus_bisection_keeps_what_sorting_keeps():
    probs = np.asarray(jax.nn.softmax(2 * jax.random.normal(jax.random.PRNGKey(1), (16, 300))))
    for top_p in (1e-6, 0.1, 0.5, 0.9, 0.99):
        kept = probs >= np.asarray(nucleus_threshold(jnp.asarray(probs), top_p))
        for row, keep in zip(probs, kept, strict=True):  # reference: sort, add up, cut
            ranked = np.sort(row)[::-1]
            n = max(int(np.sum(np.cumsum(ranked) - ranked < top_p)), 1)
            assert keep.sum() == n and row[keep].min() == ranked[n - 1]


@pytest.mark.parametrize("bad", [{"top_p": 0.0}, {"top_p": 1.5}, {"top_k": 0},
                                 {"temperature": -1.0}])
def test_bad_sampling_settings_are_one_line_errors(bad):
    with pytest.raises(ValueError, match="must be"):
        Sampling(**{"temperature": 1.0, **bad})


def test_eos_ends_a_row(llama):
    _, engine, params = llama
    greedy = engine.generate(params, PROMPTS, 6, GREEDY)
    new = greedy[1][0]
    stop_at = next(i for i in range(1, len(new)) if new[i] not in new[:i])
    rows = engine.generate(params, PROMPTS, 6, GREEDY, eos_id=new[stop_at])
    assert rows[1] == (new[:stop_at], True)
    stream = list(engine.stream(params, PROMPTS[1], 6, GREEDY, eos_id=new[stop_at]))
    assert stream == new[:stop_at]


def test_sharded_mesh_gives_the_single_device_tokens_and_logits():
    single = tiny_config(**MODELS["llama_gqa"])
    sharded = tiny_config((2, 2, 2), **MODELS["llama_gqa"])
    ref_engine, ref_params, _ = engine_for(single)
    engine, params, _ = engine_for(sharded, (2, 2, 2))
    assert engine.row_multiple == 4
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(params))
    batch = left_pad(PROMPTS, 4)
    ref_logits, _ = ref_engine.prefill(ref_params, batch, 4)
    logits, cache = engine.prefill(params, batch, 4)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), atol=1e-5)
    key = cache["backbone"]["block_0"]["attn"]["cached_key"]  # (B, T, Hkv, Dh)
    assert key.sharding.shard_shape(key.shape) == (1, key.shape[1], 1, key.shape[3])
    assert (engine.generate(params, PROMPTS, 6, GREEDY)
            == ref_engine.generate(ref_params, PROMPTS, 6, GREEDY))


# ------------------------------------------------------------ a trained run, text, the CLI


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny pretrained run (4 steps, on the 8 test devices), and an export of it."""
    out = tmp_path_factory.mktemp("gen_run")
    assert main(["train", TINY, "train.steps=4", f"train.run_dir={out}", "train.sample_tokens=4",
                 "train.eval_batches=1", "logging.progress=false", "logging.tensorboard=false",
                 "logging.memory_summary=false", "checkpoint.every=2"]) == 0
    assert main(["export", str(out), str(out / "export")]) == 0
    return out


@pytest.fixture(scope="module")
def gen(run_dir):
    return Generator.load(run_dir)


def test_run_step_and_export_sources_load_the_same_model(run_dir, gen):
    for source in (run_dir / "checkpoints" / "4", run_dir / "export"):
        other = load_source(source)
        assert other.cfg == gen.cfg
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), other.params,
                                         gen.params))
        assert other.tokenizer.get_vocab() == gen.tokenizer.get_vocab()


def test_step_picks_a_checkpoint_of_the_run(run_dir, gen, capsys):
    earlier = Generator.load(run_dir, step=2)
    same = load_source(run_dir / "checkpoints" / "2")
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), earlier.params,
                                     same.params))
    assert not jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                                         earlier.params, gen.params))  # step 4 is the latest
    args = ["--json", "--max-new-tokens", "4", "--temperature", "0"]
    assert main(["generate", str(run_dir), "ROMEO:", "JULIET:", "--step", "2", *args]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["completion"] for r in rows] == [
        c.text for c in earlier.generate(["ROMEO:", "JULIET:"], 4, GREEDY)]
    for source, step, message in ((run_dir, 3, "no complete checkpoint of step 3"),
                                  (run_dir / "export", 2, "is not a run directory"),
                                  (run_dir / "checkpoints" / "4", 2, "differs from the step")):
        assert main(["generate", str(source), "hi", "--step", str(step)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_library_and_cli_sample_alike(run_dir, gen, capsys):
    assert Sampling() == DEFAULT and DEFAULT.temperature > 0 and DEFAULT.top_k == 40
    prompts = ["ROMEO:", "JULIET: O"]
    assert main(["generate", str(run_dir), *prompts, "--json", "--max-new-tokens", "6",
                 "--seed", "5"]) == 0  # no sampling flags: the library's defaults
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["completion"] for r in rows] == [c.text for c in gen.generate(prompts, 6, seed=5)]
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT.temperature}," in shown and f"(default: {DEFAULT.top_k}," in shown


def test_stop_string_ends_the_text(gen):
    hot = Sampling(1.0)
    [free] = gen.generate(["ROMEO:"], 24, hot, seed=1)
    assert len(free.text) >= 8, free
    stop = free.text[4:6]
    cut = free.text[:free.text.find(stop)]
    [stopped] = gen.generate(["ROMEO:"], 24, hot, seed=1, stop=["zzzz-never", stop])
    assert (stopped.text, stopped.finish_reason) == (cut, "stop")
    assert "".join(gen.stream("ROMEO:", 24, hot, seed=1, stop=[stop])) == cut


def test_generation_stops_at_the_context(gen):
    eos, gen.eos_id = gen.eos_id, None
    try:
        [c] = gen.generate(["ROMEO:"], 10_000)
    finally:
        gen.eos_id = eos
    assert c.finish_reason == "length"
    assert len(c.token_ids) == gen.cfg.max_seq_len - len(gen.encode("ROMEO:"))


def test_cli_says_once_that_max_new_tokens_was_capped(run_dir, gen, capsys):
    long = "word " * 100  # near the 128-token context: little room left
    room = gen.cfg.max_seq_len - len(gen.encode(long))
    run, opts = ["generate", str(run_dir)], ["--max-new-tokens", "1000", "--temperature", "0"]
    assert main([*run, long, "ROMEO:", *opts, "--json", "--batch-size", "1"]) == 0  # 2 batches
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"jaxlm: --max-new-tokens 1000 capped to {room}: the longest prompt is "
        f"{gen.cfg.max_seq_len - room} tokens (BOS included) of the model's "
        f"{gen.cfg.max_seq_len}-token context (model.max_seq_len)"]
    rows = [json.loads(line) for line in captured.out.splitlines()]  # stdout: JSON only
    assert rows[0]["tokens"] <= room and len(rows) == 2
    assert main([*run, long, *opts]) == 0  # one prompt, streamed: told before its tokens
    assert "capped to" in capsys.readouterr().err
    assert main([*run, "ROMEO:", "--max-new-tokens", "8"]) == 0  # room enough: nothing said
    assert capsys.readouterr().err == ""


def test_stream_yields_each_piece_before_computing_the_next(gen, monkeypatch):
    steps = []
    step = gen.engine.step
    monkeypatch.setattr(gen.engine, "step", lambda *a: steps.append(1) or step(*a))
    monkeypatch.setattr(gen, "eos_id", None)
    pieces = gen.stream("ROMEO:", 6, Sampling(1.0), seed=2)
    seen = [len(steps) for _ in pieces]  # decode steps run when each piece arrived
    assert seen[0] == 0 and seen == sorted(seen) and len(steps) == 5 and len(seen) >= 2


class Writes(io.StringIO):
    """stdout that remembers every write."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, s):
        self.writes.append(s)
        return super().write(s)


def test_cli_streams_one_prompt(run_dir, gen, monkeypatch):
    out = Writes()
    monkeypatch.setattr(sys, "stdout", out)
    args = ["--max-new-tokens", "8", "--temperature", "1", "--seed", "4"]
    assert main(["generate", str(run_dir), "ROMEO:", *args]) == 0
    pieces = list(gen.stream("ROMEO:", 8, Sampling(1.0, top_k=40), seed=4))
    assert out.getvalue() == "ROMEO:" + "".join(pieces) + "\n"
    writes = [w for w in out.writes if w]  # print(x, end="") also writes its empty end
    assert writes[1:1 + len(pieces)] == pieces  # printed piece by piece, as they came


def test_cli_jsonl_for_several_prompts_from_a_file(run_dir, gen, tmp_path, capsys):
    prompts = ["ROMEO:", "JULIET: O", "First Citizen:"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n\n")
    assert main(["generate", str(run_dir), "--file", str(tmp_path / "prompts.txt"), "--json",
                 "--max-new-tokens", "5", "--temperature", "0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    for r in rows:  # the batch gives what each prompt gets alone
        [alone] = gen.generate([r["prompt"]], 5, GREEDY)
        assert (r["completion"], r["finish_reason"]) == (alone.text, alone.finish_reason)
        assert r["tokens"] == len(alone.token_ids) <= 5


@pytest.fixture(scope="module")
def encoder_export(tmp_path_factory):
    """What an encoder's export looks like to `jaxlm generate` (config first)."""
    out = tmp_path_factory.mktemp("bert_export")
    (out / "config.json").write_text(load_config(None, ["model.family=bert",
                                                        "data.mode=mlm"]).to_json())
    (out / "model.safetensors").write_bytes(b"")
    return out


@pytest.mark.parametrize("case,args,message", [
    ("too long", ["word " * 300], "is 3"),  # 301+ tokens, context 128
    ("empty", [""], "the prompt is empty"),
    ("top_p 0", ["hi", "--top-p", "0"], "top_p 0.0 must be in (0, 1]"),
    ("top_p 1.5", ["hi", "--top-p", "1.5"], "top_p 1.5 must be in (0, 1]"),
    ("no tokens", ["hi", "--max-new-tokens", "0"], "max_new_tokens 0 must be >= 1"),
    ("encoder", ["hi"], "is an encoder"),
    ("no source", ["hi"], "does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_2(run_dir, encoder_export, capsys, case, args,
                                              message):
    source = {"encoder": encoder_export, "no source": run_dir / "nope"}.get(case, run_dir)
    assert main(["generate", str(source), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxlm: error: ") and message in lines[0]
