"""Rebuild data/apples_sample/: a small, class-balanced subset of the 3-class apples set.

    python scripts/make_apples_sample.py --src ../shared/data/apples --per-class 100

--src is a folder built by `vaegen data fruit360`. The pick is seeded and spreads evenly
over the Fruit-360 source classes inside each target class (e.g. Apple Golden 1/2/3).
"""

from __future__ import annotations

import argparse
import random
import shutil
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("data/apples_sample"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    for class_dir in sorted(p for p in args.src.iterdir() if p.is_dir()):
        by_source = defaultdict(list)
        for path in sorted(class_dir.glob("*.jpg")):
            by_source[path.name.split("__")[0]].append(path)
        for files in by_source.values():
            rng.shuffle(files)
        # round-robin over the source classes so each is represented equally
        picked, queues = [], list(by_source.values())
        while len(picked) < args.per_class and any(queues):
            for queue in queues:
                if queue and len(picked) < args.per_class:
                    picked.append(queue.pop())
        target = args.out / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for path in picked:
            shutil.copy2(path, target / path.name)
        print(f"{class_dir.name}: {len(picked)} images from {sorted(by_source)}")


if __name__ == "__main__":
    main()
