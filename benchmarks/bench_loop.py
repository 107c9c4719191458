"""Does the curation loop pay off? Demo data with injected training-label noise -> train -> rank label issues ->
a simulated reviewer fixes the top of the queue with the recorded truth -> curated export -> retrain, and the
clean validation split's macro-F1 before and after. Prints a table.

    .venv/bin/python benchmarks/bench_loop.py [--scale 1.0] [--noise 0.25] [--epochs 14] [--img-size 64]

The loop itself is `models.loop.run_loop` (tests/models/test_loop.py runs it with fast settings).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    from models.loop import LoopSettings, run_loop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    progress = logging.StreamHandler(sys.stderr)
    progress.setFormatter(logging.Formatter("  %(message)s"))
    loop_logger = logging.getLogger("models.loop")
    loop_logger.addHandler(progress)
    loop_logger.setLevel(logging.INFO)
    rows = []
    for seed in args.seeds:
        settings = LoopSettings(scale=args.scale, noise=args.noise, epochs=args.epochs, img_size=args.img_size,
                                folds=args.folds, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            outcome = run_loop(settings, Path(tmp))
        rows.append({"seed": seed, **outcome.__dict__})
    table = pd.DataFrame(rows)
    table["delta"] = table["macro_f1_after"] - table["macro_f1_before"]
    print(f"\nloop: scale {args.scale}, noise {args.noise}, {args.epochs} epochs at {args.img_size}px, "
          f"{args.folds}-fold CV ranking")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
