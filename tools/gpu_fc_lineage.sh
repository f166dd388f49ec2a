#!/bin/bash
# The FC lineage of §5.2's switched quick plan (16000-step fine-tuning from the 6000-step p(x), n_images 200) in
# one device call on a lent GPU: the FC classifier, both seeds' inversion models, their NCEs, the FC decoder and
# samples. Why a GPU: these models train in bf16, which a CPU without AVX-512 emulates (no route there), and the
# FC classifier's bytes differ between machines, so all of its lineage is computed on one machine.
#
# Measured on an NVIDIA H200 (torch 2.11, session of 2026-12-04, bench/results/README.md "H200"): one quick §5.2
# model trains at 88.4 updates/s with --cuda-graphs (16.6 eagerly), so a 16000-step model takes ~3 min; TWO
# processes sharing the GPU ran 24.5-25 updates/s each (49 together, less than one alone), so the stages run in
# one process, one after another. The FC classifier trained there twice gave the same bytes (sha256 7f7ed7e1…).
# Expect ~7-8 minutes in all.
#
# Prepare here, once (the affNIST file is built by `make data` and is not committed; .gitignore keeps .gpu/ out):
#   mkdir -p .gpu && xz -T2 -c data/affnist/affnist-v1-b4096dc0c188cfd4.npz > .gpu/affnist.npz.xz
# Run at a committed, clean tree (device `run`, carry [".gpu/affnist.npz.xz"], timeout_s 590):
#   set -o pipefail; INVERSION_COMMIT=<git rev-parse HEAD> bash tools/gpu_fc_lineage.sh 2>&1 | tee $OUT/log.txt
# Checked on a CPU with DRYRUN=1 OUT=/tmp/x (all but the training: the switched plan then lists exactly the seven
# FC stages below as missing and the other 16 as cached).
# It stops its training at DEADLINE seconds (default 530) and always returns what it has: the finished stages and
# the .work folders of unfinished ones (resumable: a second call recomputes the classifier, whose bytes must match
# and are checked against the .work folder's opened.json), as $OUT/stages.tgz.part*. Back here:
#   cat <files_at>/stages.tgz.part* | tar xz -C /tmp/fc-lineage   # then move the stage folders into cache/quick
# To resume unfinished models in a later call: cat <files_at>/stages.tgz.part* > .gpu/resume.tgz and carry it too.
set -u
T0=$SECONDS
DEADLINE=${DEADLINE:-530}
export PYTHONPATH=lib PYTHONUNBUFFERED=1 INVERSION_COMMIT=${INVERSION_COMMIT:?set INVERSION_COMMIT to the commit} \
       INVERSION_DIRTY=0 TQDM_MININTERVAL=20
RUN=gpu-run  # everything this script writes there (ignored: .gitignore)
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
mkdir -p data/affnist $RUN/log
NPZ=data/affnist/affnist-v1-b4096dc0c188cfd4.npz
[ -s $NPZ ] || xz -T0 -dc .gpu/affnist.npz.xz > $NPZ || exit 1
sha256sum $NPZ
# The switched plan: params/quick.yaml with §5.2's 16000 steps from the 6000-step p(x) and 200 images shown.
python3 - <<'EOF' || exit 1
import yaml
p = yaml.safe_load(open("params/quick.yaml"))
a = p["architectures"]
a["inversion"].update(steps=16000, warm_start_steps=6000)
a["evaluation"]["n_images"] = 200
yaml.safe_dump(p, open("gpu-run/quick.yaml", "w"), sort_keys=False)
EOF
export INVERSION_CACHE=$PWD/$RUN/cache
FC="classifier-8f0e17b5985b warm_inversion-e2ea6981851f nce-958d917195ef warm_inversion-10f3ae3941c9 nce-8320f79f0e72
    decoder-8b1ca1a76835 samples-f8d4325e65dd"
if [ ! -d $RUN/cache/quick ]; then  # the committed stages, less the FC lineage (another machine's classifier)
  mkdir -p $RUN/cache && cp -r cache/quick $RUN/cache/quick
  for d in $FC; do rm -rf $RUN/cache/quick/$d $RUN/cache/quick/$d.work; done
  if [ -f .gpu/resume.tgz ]; then  # an earlier call's return, carried back: resume its unfinished models
    tar xzf .gpu/resume.tgz -C $RUN/cache/quick --wildcards '*.work/*' && echo "resuming: $(ls -d $RUN/cache/quick/*.work)"
  fi
fi
python3 - $FC <<'EOF' || exit 1
import sys
from inversion import pipeline
from inversion.pipeline.cache import iter_refs
from inversion.pipeline.plans import plan
names = {r.dirname for r in iter_refs(plan(pipeline.load_params("gpu-run/quick.yaml"), ["architectures"]))}
missing = [d for d in sys.argv[1:] if d not in names]
sys.exit(f"not in the switched plan (params changed? update FC): {missing}" if missing else 0)
EOF
touch $RUN/start
# DRYRUN=1 (on a CPU, to check this script): everything but the training, which becomes a listing
if [ -n "${DRYRUN:-}" ]; then WHAT=list; else WHAT="run --cuda-graphs --progress"; fi
python3 -m inversion.pipeline $WHAT --params $RUN/quick.yaml --only architectures > $RUN/log/pipeline.txt 2>&1 &
PID=$!
while kill -0 $PID 2>/dev/null; do
  sleep 15
  echo "--- t=$((SECONDS-T0)) s $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"
  tail -c 600 $RUN/log/pipeline.txt | tr '\r' '\n' | grep -v '^\s*$' | tail -1 | cut -c1-170
  if (( SECONDS - T0 > DEADLINE )); then
    echo "deadline: stopping (resumable from the .work folders)"; kill -TERM $PID; sleep 8; kill -KILL $PID 2>/dev/null
  fi
done
wait $PID; echo "pipeline rc=$? elapsed $((SECONDS-T0)) s"
python3 -m inversion.pipeline list --params $RUN/quick.yaml --only architectures | grep -v "^cached  " | tee $RUN/log/list.txt
new=$(cd $RUN/cache/quick && find . -maxdepth 1 -mindepth 1 -type d -newer ../../start ! -name '.tmp-*' | sed 's|^\./||')
echo "new: $new"
tar czf /tmp/stages.tgz --exclude='classifier-*/model.pt' --exclude='classifier-*.work' -C $RUN/cache/quick $new -C $PWD/$RUN log \
  && split -b 15M -d /tmp/stages.tgz $OUT/stages.tgz.part
ls -la $OUT
