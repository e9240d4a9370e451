"""Batch inference (`hpcai submit infer`): one run, the same model and rows, side by side.

    .venv/bin/python bench/infer/run.py [--quick] [--rounds 4] [--out bench/results/infer.json]

The model: the built-in GPT (hpc_aidc.node.model.GPT, GPT-2 shape: 6 layers, 6 heads, d_model 384, vocab
8192, context 512, 17.1M parameters, seeded random weights), and the same weights copied into a Hugging
Face GPT2LMHeadModel (exact GELU, untied head) saved with save_pretrained next to a byte-level BPE tokenizer
trained here (8192 tokens). The rows: 256 synthetic prompts (4-60 words, ~5-70 tokens), 4 input shards of
64 rows (a small shard size, so per-shard costs weigh more than at the default 1024). Greedy generation of
32 new tokens, batches of 16, fp32, CPU, one torch thread (the dev cluster's tasks run with
OMP_NUM_THREADS=1 too).

1. Harness overhead: the task runner (ShardRunner.run_shard over every shard: reading and tokenising
   rows, batching, flushing each batch, the energy work record, the output shard, the completion record)
   against a bare loop of engine.generate over exactly the same batches (same HfEngine object, the batches
   make_batches gives, no records or writes). The arms alternate shard by shard (which goes first
   alternates too), each round in a fresh output directory; after an untimed warm-up of both. Goal: at
   most 5% overhead (median over rounds of each round's harness/bare ratio). Both arms' tokens must agree.
   On this shared 2-core machine one round can swing by 10% or more, so the runner's own split is also
   reported: its time outside engine.generate relative to the time inside it, in the same calls.
2. KV-cache generation tokens/s: GptEngine.generate (the built-in GPT with its KV cache) against Hugging
   Face `generate` (greedy, use_cache=True) on the GPT2LMHeadModel with the same weights, the same prompts
   (the first rows, in make_batches batches), batch size and new tokens; no end token on either side, so
   both produce every token. The arms alternate batch by batch. A third arm, HfEngine.generate (our loop
   over the HF model), separates our loop from the model. Goal: GptEngine >= 1.0x HF generate. Greedy
   tokens of both are compared; where a row parts, the gap of the two leading logits there is shown.
3. 1, 2 and 4 array tasks on the dev cluster: `hpcai submit infer ... --tasks N -p cpu` on the same input,
   wall time from the submit command to the last shard's completion record (polled with
   `hpcai infer status OUT --json`, which must report every shard done). This machine has 2 cores: 4 tasks
   cannot scale past 2.
4. GPU (bf16 throughput, vLLM's offline LLM.generate side by side): only where a GPU machine is lent;
   otherwise the JSON says "not run: no GPU lent".

Prints a table and writes bench/results/infer.json (~6 min; --quick ~1 min)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HPCAI = [sys.executable, "-m", "hpc_aidc.cli.main"]
GOAL_OVERHEAD = 0.05
GOAL_GEN_RATIO = 1.0
CORES_NOTE = ("this machine has 2 cores (shared with other work); each task runs one torch thread, so 4 tasks "
              "cannot scale past 2")
OURS = "GptEngine.generate (built-in GPT, KV cache)"
HF = "HF generate (GPT2LMHeadModel, greedy, use_cache)"
HF_OURS = "HfEngine.generate (our loop, HF model)"


@dataclass(frozen=True)
class Setup:
    n_layer: int
    n_head: int
    d_model: int
    vocab: int
    context: int
    rows: int
    rows_per_shard: int
    batch_size: int
    new_tokens: int
    gen_rows: int  # prompts for part 2
    rounds: int
    gen_rounds: int
    cluster_rounds: int


FULL = Setup(6, 6, 384, 8192, 512, 256, 64, 16, 32, 64, 4, 5, 2)
QUICK = Setup(4, 4, 256, 8192, 512, 64, 16, 16, 16, 32, 2, 2, 1)


# --- model and rows ---------------------------------------------------------------------------------------

def make_corpus(n: int, seed: int = 0) -> list[str]:
    """n prompts of 4-60 words over a 3000-word synthetic lexicon (deterministic)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 60))) for _ in range(n)]


def make_models(s: Setup, root: Path, corpus: list[str]) -> tuple[Any, Any, Any]:
    """(built-in GPT, GPT2LMHeadModel with the same weights, tokenizer); the HF model and tokenizer are saved
    to `root` (what --model names)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from hpc_aidc.node.model import GPT
    from hpc_aidc.spec.train import ModelConfig

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=s.vocab, special_tokens=["<unk>", "<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>")
    fast.save_pretrained(root)
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(n_layer=s.n_layer, n_head=s.n_head, d_model=s.d_model, vocab_size=s.vocab,
                          seq_len=s.context)).eval()
    config = GPT2Config(vocab_size=s.vocab, n_positions=s.context, n_embd=s.d_model, n_layer=s.n_layer,
                        n_head=s.n_head, activation_function="gelu", tie_word_embeddings=False,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id)
    hf = GPT2LMHeadModel(config).eval()
    t = hf.transformer
    with torch.no_grad():
        t.wte.weight.copy_(gpt.embed.tok.weight)
        t.wpe.weight.copy_(gpt.embed.pos.weight)
        for block, h in zip(gpt.blocks, t.h, strict=True):
            h.ln_1.load_state_dict(block.ln1.state_dict())
            h.ln_2.load_state_dict(block.ln2.state_dict())
            for conv, lin in ((h.attn.c_attn, block.qkv), (h.attn.c_proj, block.proj), (h.mlp.c_fc, block.fc),
                              (h.mlp.c_proj, block.out)):
                conv.weight.copy_(lin.weight.T)  # HF's Conv1D keeps [in, out]
                conv.bias.copy_(lin.bias)
        t.ln_f.load_state_dict(gpt.head.ln.state_dict())
        hf.lm_head.weight.copy_(gpt.head.lm.weight)
    hf.save_pretrained(root)
    return gpt, hf, fast


# --- 1. harness overhead ----------------------------------------------------------------------------------

def harness_part(s: Setup, work: Path, model_dir: Path, input_path: Path) -> dict[str, Any]:
    from hpc_aidc.data.infer_inputs import plan_inputs, read_shard
    from hpc_aidc.formats.infer_plan import make_plan, write_plan
    from hpc_aidc.node.infer.model import resolve_model, row_seed
    from hpc_aidc.node.infer.run import ShardRunner, make_batches
    from hpc_aidc.spec.infer import parse_infer_params

    params = parse_infer_params(task="generate", max_new_tokens=s.new_tokens, batch_size=s.batch_size,
                                precision="fp32")
    energy = work / "energy"
    (energy / "bench" / "r0" / "work").mkdir(parents=True)  # report_work writes, as in a job with a sampler
    plan = make_plan(plan_inputs(input_path, "text", s.rows_per_shard), resolve_model(str(model_dir), "generate"),
                     params, 1, "jsonl", str(energy))
    setup_runner = ShardRunner(work / "setup", plan, "bench", 0, "local")
    engine = setup_runner.engine  # HfEngine, loaded once; both arms run this object

    # The batches run_shard forms (same code path: prepare, then make_batches over length + new tokens).
    batches: list[list[tuple[list[list[int]], list[int], list[str]]]] = []
    for shard in plan.input.shards:
        batches.append([])
        prepared = [setup_runner.prepare(r) for r in read_shard(plan.input, shard)]
        todo = [i for i, p in enumerate(prepared) if p.error is None]
        cut = make_batches([prepared[i].length + params.max_new_tokens for i in todo], params.batch_size,
                           params.batch_tokens)
        for b in cut:
            members = [prepared[todo[j]] for j in b]
            batches[-1].append(([p.ids or [] for p in members],
                                [row_seed(params.seed, p.row.id) for p in members], [p.row.id for p in members]))
    bare_tokens: dict[str, list[int]] = {}

    def bare(k: int) -> float:
        start = time.perf_counter()
        for ids, seeds, row_ids in batches[k]:
            outs = engine.generate(ids, seeds, params)
            bare_tokens.update({r: g.tokens for r, g in zip(row_ids, outs, strict=True)})
        return time.perf_counter() - start

    outputs: list[Path] = []

    inside = [0.0]  # seconds of engine.generate calls made by run_shard

    def timed_generate(*a: Any) -> Any:
        start = time.perf_counter()
        try:
            return type(engine).generate(engine, *a)
        finally:
            inside[0] += time.perf_counter() - start

    def harness(runner: ShardRunner, k: int) -> float:
        engine.generate = timed_generate  # type: ignore[method-assign]  # the harness's own model time
        try:
            start = time.perf_counter()
            state = runner.run_shard(k)
            seconds = time.perf_counter() - start
        finally:
            del engine.generate
        assert state == "done", state
        return seconds

    # Warm-up, untimed: first-call allocations, and the modules run_shard imports on first use.
    write_plan(work / "warm-up", plan)
    warm = ShardRunner(work / "warm-up", plan, "bench", 0, "local")
    warm._engine = engine
    harness(warm, 0)
    bare(0)
    samples: dict[str, list[float]] = {"harness": [], "bare": []}
    pairs: list[float] = []
    outside: list[float] = []  # per round: harness seconds outside the model calls / model seconds inside
    for r in range(s.rounds):
        out = work / f"harness-{r}"  # a fresh output directory each round: every shard runs
        write_plan(out, plan)
        runner = ShardRunner(out, plan, "bench", 0, "local")
        runner._engine = engine
        outputs.append(out)
        h = b = 0.0
        inside[0] = 0.0
        for k in range(plan.num_shards):  # the arms alternate shard by shard, first one then the other
            if (r + k) % 2:
                bk = bare(k)
                hk = harness(runner, k)
            else:
                hk = harness(runner, k)
                bk = bare(k)
            h, b = h + hk, b + bk
            pairs.append(hk / bk - 1)
        samples["harness"].append(h)
        samples["bare"].append(b)
        outside.append((h - inside[0]) / inside[0])
    harness_tokens = {row["id"]: row["tokens"] for f in sorted((outputs[-1] / "shards").glob("*.jsonl"))
                      for row in map(json.loads, f.read_text().splitlines())}
    overheads = [h / b - 1 for h, b in zip(samples["harness"], samples["bare"], strict=True)]
    med_h, med_b = statistics.median(samples["harness"]), statistics.median(samples["bare"])
    rows = plan.input.num_rows
    new_tokens = sum(len(t) for t in harness_tokens.values())
    return {"engine": type(engine).__name__, "shards": plan.num_shards, "rows": rows,
            "batches": sum(len(b) for b in batches),
            "new_tokens": new_tokens, "samples_s": samples, "median_s": {"harness": med_h, "bare": med_b},
            "rows_per_s": {"harness": rows / med_h, "bare": rows / med_b},
            "overhead_paired_median": statistics.median(overheads), "overhead_per_round": overheads,
            "overhead_of_medians": med_h / med_b - 1, "overhead_shard_pairs_median": statistics.median(pairs),
            "goal_max_overhead": GOAL_OVERHEAD, "outside_model_share_per_round": outside,
            "outside_model_share_median": statistics.median(outside),
            "outputs_equal": harness_tokens == bare_tokens and len(harness_tokens) == rows}


# --- 2. KV-cache generation -------------------------------------------------------------------------------

def generate_part(s: Setup, gpt: Any, hf: Any, tokenizer: Any, corpus: list[str], hf_engine: Any) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig

    from hpc_aidc.data.tokenize import load_tokenizer
    from hpc_aidc.node.infer.model import GptEngine, _left_pad
    from hpc_aidc.node.infer.run import make_batches
    from hpc_aidc.spec.infer import parse_infer_params

    params = parse_infer_params(task="generate", max_new_tokens=s.new_tokens, batch_size=s.batch_size,
                                precision="fp32")
    cpu = torch.device("cpu")
    engine = GptEngine(gpt, s.context, s.vocab, load_tokenizer("bytes"), cpu)
    engine.eos_id = None  # every row generates all its tokens (random weights), as on the HF side
    hf_engine.eos_id = None
    prompts = [[int(t) for t in tokenizer(text)["input_ids"]] for text in corpus[:s.gen_rows]]
    batches = [[prompts[i] for i in b] for b in make_batches([len(p) for p in prompts], s.batch_size, None)]
    # No end token on the HF side either (the saved model names one): no stop, and no processor that keeps
    # it out (min_new_tokens would), so both sides pick the plain argmax for all new tokens.
    hf.generation_config.eos_token_id = hf.config.eos_token_id = None
    gen_config = GenerationConfig(max_new_tokens=s.new_tokens, do_sample=False, use_cache=True, pad_token_id=0,
                                  eos_token_id=None, bos_token_id=None)

    def ours(batch: list[list[int]]) -> list[list[int]]:
        return [g.tokens for g in engine.generate(batch, [0] * len(batch), params)]

    def theirs(batch: list[list[int]]) -> list[list[int]]:
        ids, mask, _ = _left_pad(batch, cpu)
        with torch.inference_mode():
            out = hf.generate(input_ids=ids, attention_mask=mask.long(), generation_config=gen_config)
        return [list(map(int, row)) for row in out[:, ids.shape[1]:].tolist()]

    def hf_loop(batch: list[list[int]]) -> list[list[int]]:
        return [g.tokens for g in hf_engine.generate(batch, [0] * len(batch), params)]

    arms: dict[str, Callable[[list[list[int]]], list[list[int]]]] = {OURS: ours, HF: theirs, HF_OURS: hf_loop}
    names = list(arms)
    for fn in arms.values():  # warm-up, one batch each
        fn(batches[0])
    samples: dict[str, list[float]] = {n: [] for n in names}
    pairs: list[float] = []
    tokens: dict[str, list[list[list[int]]]] = {n: [[] for _ in batches] for n in names}
    for r in range(s.gen_rounds):
        seconds = dict.fromkeys(names, 0.0)
        count = dict.fromkeys(names, 0)
        for j, batch in enumerate(batches):  # the arms alternate batch by batch, each taking its turn first
            shift = (r + j) % len(names)
            rate = {}
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                out = arms[name](batch)
                dt = time.perf_counter() - start
                n = sum(len(t) for t in out)
                seconds[name] += dt
                count[name] += n
                rate[name] = n / dt
                tokens[name][j] = out
            pairs.append(rate[OURS] / rate[HF])
        for name in names:
            samples[name].append(count[name] / seconds[name])
    medians = {name: statistics.median(v) for name, v in samples.items()}
    ratios = [o / h for o, h in zip(samples[OURS], samples[HF], strict=True)]
    rows = {name: [row for b in tokens[name] for row in b] for name in names}
    flat = {name: [t for row in rows[name] for t in row] for name in names}
    agree = sum(a == b for a, b in zip(flat[OURS], flat[HF], strict=True)) / len(flat[HF])
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(rows[OURS], rows[HF], strict=True)) if a != b]
    flat_prompts = [p for b in batches for p in b]
    return {"prompts": len(prompts), "batches": len(batches), "batch_size": s.batch_size,
            "new_tokens_per_row": s.new_tokens, "prompt_tokens": sum(len(p) for p in prompts),
            "tokens_per_row_all_arms": sorted({len(r) for name in names for r in rows[name]}),
            "tokens_per_s_samples": samples, "tokens_per_s_median": medians,
            "ratio_paired_median": statistics.median(ratios), "ratio_per_round": ratios,
            "ratio_batch_pairs_median": statistics.median(pairs),
            "ratio_of_medians": medians[OURS] / medians[HF], "goal_min_ratio": GOAL_GEN_RATIO,
            "hf_engine_vs_hf_generate_paired_median": statistics.median(
                a / b for a, b in zip(samples[HF_OURS], samples[HF], strict=True)),
            "greedy_tokens_agree": agree, "greedy_rows_equal": f"{len(rows[HF]) - len(differ)}/{len(rows[HF])}",
            "greedy_divergences": [divergence(hf, flat_prompts[i], a, b) for i, a, b in differ[:5]]}


def divergence(hf: Any, prompt: list[int], ours: list[int], theirs: list[int]) -> dict[str, Any]:
    """Where two greedy rows part, and how close the two leading logits were there (fp32, unbatched): a
    near tie that batched kernels' rounding can flip, or a real difference."""
    import torch

    k = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
    with torch.inference_mode():
        logits = hf(input_ids=torch.tensor([prompt + theirs[:k]])).logits[0, -1]
    top = torch.topk(logits, 2)
    return {"position": k, "ours": ours[k], "hf": theirs[k], "top2": top.indices.tolist(),
            "top2_logit_gap": float(top.values[0] - top.values[1]),
            "logit_gap_ours_vs_hf": float(logits[theirs[k]] - logits[ours[k]])}


# --- 3. array tasks on the dev cluster --------------------------------------------------------------------

def cluster_available() -> str | None:
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return "not run: no Slurm client here"
    probe = subprocess.run(["sinfo", "-h", "-p", "cpu", "-o", "%a"], capture_output=True, text=True)
    if probe.returncode != 0 or "up" not in probe.stdout:
        return f"not run: the dev cluster's cpu partition is not up ({(probe.stderr or probe.stdout).strip()[:200]})"
    return None


def status_json(out: Path) -> dict[str, Any]:
    proc = subprocess.run([*HPCAI, "infer", "status", str(out), "--json"], capture_output=True, text=True,
                          check=True, cwd="/tmp")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def cluster_run(s: Setup, work: Path, model_dir: Path, input_path: Path, tasks: int, account: str,
                timeout: float = 600) -> dict[str, Any]:
    out = work / f"cluster-{tasks}-{time.time_ns()}"
    argv = [*HPCAI, "submit", "infer", "--model", str(model_dir), "--input", str(input_path), "--output", str(out),
            "--task", "generate", "--tasks", str(tasks), "--rows-per-shard", str(s.rows_per_shard),
            "--batch-size", str(s.batch_size), "--max-new-tokens", str(s.new_tokens), "--precision", "fp32",
            "-p", "cpu", "-t", "00:15:00", "-A", account, "--json"]
    t0 = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd="/tmp")
    if proc.returncode != 0:
        raise RuntimeError(f"hpcai submit infer failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    submitted = json.loads(proc.stdout)
    jobs = [a["job_id"] for a in submitted["arrays"]]
    deadline = time.monotonic() + timeout
    while True:
        st = status_json(out)
        if st["failed"]:
            raise RuntimeError(f"{tasks}-task run {out}: failed shards {st['errors']}")
        if st["done"] == st["shards"]:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tasks}-task run {out}: {st}")
        time.sleep(1.0)
    records = [json.loads(p.read_text()) for p in sorted((out / "done").glob("*.json"))]
    end = max(r["finished"] for r in records)
    first_start = min(r["finished"] - r["seconds"] for r in records)
    for job in jobs:  # the next run starts on an idle cluster
        while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
            time.sleep(0.5)
    return {"tasks": tasks, "jobs": jobs, "output": str(out), "wall_s": end - t0,
            "submit_to_first_shard_start_s": first_start - t0, "rows": st["rows_done"], "error_rows": st["error_rows"],
            "rows_per_s_status": st["rows_per_s"], "tokens_per_s_status": st["tokens_per_s"],
            "status_done": f"{st['done']}/{st['shards']}", "loadavg_1min_end": os.getloadavg()[0],
            "shards": [{k: r[k] for k in ("shard", "seconds", "node", "job")} for r in records]}


def cluster_part(s: Setup, work: Path, model_dir: Path, input_path: Path, account: str,
                 reference: Path | None) -> dict[str, Any]:
    counts = [1, 2, 4]
    runs: list[dict[str, Any]] = []
    for r in range(s.cluster_rounds):
        for n in counts[r % 3:] + counts[:r % 3]:
            runs.append(cluster_run(s, work, model_dir, input_path, n, account))
            print(f"  cluster: {n} task(s): {runs[-1]['wall_s']:.1f} s", flush=True)
    wall = {n: statistics.median(x["wall_s"] for x in runs if x["tasks"] == n) for n in counts}
    start = {n: statistics.median(x["submit_to_first_shard_start_s"] for x in runs if x["tasks"] == n)
             for n in counts}
    equal = None
    if reference is not None:
        def tokens_of(out: Path) -> dict[str, Any]:
            return {row["id"]: row["tokens"] for f in sorted((out / "shards").glob("*.jsonl"))
                    for row in map(json.loads, f.read_text().splitlines())}
        ref = tokens_of(reference)
        equal = all(tokens_of(Path(x["output"])) == ref for x in runs)
    return {"note": CORES_NOTE, "partition": "cpu", "cores": os.cpu_count(), "runs": runs,
            "wall_s_median": {str(n): v for n, v in wall.items()},
            "submit_to_first_shard_start_s_median": {str(n): v for n, v in start.items()},
            "speedup_vs_1_task": {str(n): wall[1] / wall[n] for n in counts},
            "outputs_equal_local_runner": equal}


# --- main -------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="A smaller model, fewer rows and rounds (~1 min).")
    parser.add_argument("--rounds", type=int, default=None, help="Rounds of parts 1 and 2 [4 and 5; quick 2].")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process [1, as the tasks].")
    parser.add_argument("--account", default="physics")
    parser.add_argument("--no-cluster", action="store_true", help="Skip part 3 (recorded as not run).")
    parser.add_argument("--keep", action="store_true", help="Keep the work directory (model, outputs).")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/infer.json")
    args = parser.parse_args()
    s = QUICK if args.quick else FULL
    if args.rounds:
        s = Setup(**{**s.__dict__, "rounds": args.rounds, "gen_rounds": args.rounds})

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    began, load_start = time.time(), os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-infer-", dir="/tmp"))
    work.chmod(0o755)
    try:
        corpus = make_corpus(max(2000, s.rows))
        model_dir = work / "model"
        gpt, hf, tokenizer = make_models(s, model_dir, corpus)
        input_path = work / "prompts.jsonl"
        input_path.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                                      for i, t in enumerate(corpus[:s.rows])))
        n_params = sum(p.numel() for p in gpt.parameters())
        print(f"model: {s.n_layer} layers, {s.n_head} heads, d_model {s.d_model}, vocab {s.vocab}, context {s.context}"
              f" ({n_params / 1e6:.1f}M parameters, fp32, CPU, {args.threads} torch thread(s)); {s.rows} rows, "
              f"{s.rows // s.rows_per_shard} shards, batch {s.batch_size}, {s.new_tokens} new tokens, greedy",
              flush=True)

        print("1. harness vs bare model loop ...", flush=True)
        harness = harness_part(s, work, model_dir, input_path)
        print("2. KV-cache generate: GptEngine vs HF generate ...", flush=True)
        from hpc_aidc.node.infer.model import HfEngine

        hf_engine = HfEngine(str(model_dir), True, torch.float32, torch.device("cpu"))
        generate = generate_part(s, gpt, hf, tokenizer, corpus, hf_engine)
        print("3. array tasks on the dev cluster ...", flush=True)
        why_not = "not run: --no-cluster" if args.no_cluster else cluster_available()
        reference = sorted(work.glob("harness-*"))[-1] if harness["outputs_equal"] else None
        cluster: dict[str, Any] = ({"status": why_not, "note": CORES_NOTE} if why_not else
                                   cluster_part(s, work, model_dir, input_path, args.account, reference))
        gpu = {"status": "not run: no GPU lent",
               "planned": "bf16 throughput of the same model, and vLLM's offline LLM.generate side by side"}

        # --- table ---
        print()
        print(f"{'1. harness overhead (' + str(harness['rows']) + ' rows, same batches)':58s}"
              f"{'median s':>10s}{'rows/s':>9s}")
        for arm in ("harness", "bare"):
            label = ("ShardRunner.run_shard (read, batch, flush, write)" if arm == "harness"
                     else "bare engine.generate loop")
            print(f"{label:58s}{harness['median_s'][arm]:10.2f}{harness['rows_per_s'][arm]:9.1f}")
        ok = harness["overhead_paired_median"] <= GOAL_OVERHEAD
        print(f"overhead (median of per-round ratios) {harness['overhead_paired_median']:+.1%} "
              f"(goal <= {GOAL_OVERHEAD:.0%}: {'met' if ok else 'MISSED'}); of medians "
              f"{harness['overhead_of_medians']:+.1%}; median of shard pairs "
              f"{harness['overhead_shard_pairs_median']:+.1%}; per round "
              f"{', '.join(f'{x:+.1%}' for x in harness['overhead_per_round'])}; "
              f"outputs equal: {harness['outputs_equal']}")
        print(f"inside the runner (same calls, no drift): time outside engine.generate = "
              f"{harness['outside_model_share_median']:.2%} of the time inside it (median over rounds; per round "
              f"{', '.join(f'{x:.2%}' for x in harness['outside_model_share_per_round'])})")
        print()
        print(f"{'2. generation, ' + str(generate['prompts']) + ' prompts x ' + str(s.new_tokens) + ' new tokens':58s}"
              f"{'tokens/s':>10s}")
        for name, v in generate["tokens_per_s_median"].items():
            print(f"{name:58s}{v:10.1f}")
        ok = generate["ratio_paired_median"] >= GOAL_GEN_RATIO
        print(f"GptEngine / HF generate (median of per-round ratios) {generate['ratio_paired_median']:.2f}x "
              f"(goal >= {GOAL_GEN_RATIO:.1f}x: {'met' if ok else 'MISSED'}); per round "
              f"{', '.join(f'{x:.2f}' for x in generate['ratio_per_round'])}; median of batch pairs "
              f"{generate['ratio_batch_pairs_median']:.2f}x; HfEngine / HF generate "
              f"{generate['hf_engine_vs_hf_generate_paired_median']:.2f}x; greedy tokens agree "
              f"{generate['greedy_tokens_agree']:.1%} (rows {generate['greedy_rows_equal']})")
        for d in generate["greedy_divergences"]:
            print(f"  a greedy row parts at new token {d['position']}: ours {d['ours']}, HF {d['hf']}; leading "
                  f"logits {d['top2']} {d['top2_logit_gap']:.2g} apart (unbatched)")
        print()
        if "runs" in cluster:
            print(f"{'3. dev cluster array tasks, ' + str(s.rows) + ' rows (2 cores)':58s}"
                  f"{'wall s':>10s}{'start s':>9s}{'speedup':>9s}  each run: wall s (load avg)")
            for n in ("1", "2", "4"):
                each = ", ".join(f"{x['wall_s']:.1f} ({x['loadavg_1min_end']:.1f})" for x in cluster["runs"]
                                 if x["tasks"] == int(n))
                print(f"{n + ' array task(s)':58s}{cluster['wall_s_median'][n]:10.1f}"
                      f"{cluster['submit_to_first_shard_start_s_median'][n]:9.1f}"
                      f"{cluster['speedup_vs_1_task'][n]:8.2f}x  {each}")
            print(f"note: {CORES_NOTE}; wall = submit -> last shard's completion record; start = submit -> first "
                  f"shard started; outputs equal the local runner's: {cluster['outputs_equal_local_runner']}")
        else:
            print(f"3. dev cluster: {cluster['status']}")
        print(f"4. GPU: {gpu['status']}")

        result = {"benchmark": "infer", "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "seconds": round(time.time() - began, 1),
                  "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                              "python": platform.python_version(),
                              "torch": torch.__version__, "transformers": transformers.__version__,
                              "torch_threads": args.threads, "loadavg_start": load_start,
                              "loadavg_end": os.getloadavg()},
                  "model": {"n_layer": s.n_layer, "n_head": s.n_head, "d_model": s.d_model, "vocab_size": s.vocab,
                            "context": s.context, "parameters": n_params, "dtype": "fp32", "device": "cpu",
                            "weights": "seeded random (torch.manual_seed(0)); the HF copy has the same weights"},
                  "workload": {"rows": s.rows, "rows_per_shard": s.rows_per_shard, "batch_size": s.batch_size,
                               "max_new_tokens": s.new_tokens, "decoding": "greedy", "rounds": s.rounds},
                  "harness_overhead": harness, "kv_generate": generate, "array_tasks": cluster, "gpu": gpu}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out} ({time.time() - began:.0f} s)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
