#!/usr/bin/env bash
# The README's picture: the quickstart (the best recipe, configs/quickstart.yaml) beside the reference recipe
# (configs/train_apples.yaml's loss, β and lr) at the quickstart's size, 64 px, 20 epochs on the bundled sample,
# then `vaegen compare` of the two: docs/img/quickstart-reference-vs-best.png. About 3 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/vaegen-quickstart-picture}"
rm -rf "$out"
common=(--set "output.logs_dir=$out/logs" --set "output.best_dir=$out/best")
.venv/bin/vaegen train --config configs/quickstart.yaml "${common[@]}" --set output.run_name=reference-recipe \
  --set loss.recon=mse --set beta.schedule=cyclic --set beta.max=4.0 --set beta.warmup=10 --set beta.cycle=20 \
  --set optim.lr=2.0e-4 --set sampler.name=prior
.venv/bin/vaegen train --config configs/quickstart.yaml "${common[@]}" --set output.run_name=best-recipe
.venv/bin/vaegen compare "$out/best/reference-recipe" "$out/best/best-recipe" --out "$out/compare"
cp "$out/compare/samples.png" docs/img/quickstart-reference-vs-best.png
echo "wrote docs/img/quickstart-reference-vs-best.png (the table: $out/compare/compare.md)"
