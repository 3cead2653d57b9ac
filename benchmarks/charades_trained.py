"""``python -m benchmarks.charades_trained``: the model users deploy (the original Charades config), trained.

Speed does not depend on the weights, but the drift of a lower precision must be judged on a model that
localizes: an untrained one's spans barely move whatever its outputs do. This trains the original
``charades_i3d`` config (d=256, 3+3 layers, 1024-d frames, 1,111 words) for a few epochs on synthetic
features (``cnm-synth``) of the real Charades-STA annotations, with the commands a user would type:

    cnm-synth --annotations train.json --annotations test.json --glove glove.pkl --vocab-cap 1111 -o features.hdf5
    cnm-train --config-path charades_i3d --epochs N --set dataset.feature_path=features.hdf5 ...

Everything lands in ``--out`` (git ignores ``runs/``): ``features.hdf5`` (made once, kept), and
``trained/model-best.pt`` with its ``metrics.json``; then ``python -m benchmarks.run --checkpoint
OUT/trained/model-best.pt --features OUT/features.hdf5 --queries .../test.json`` measures every engine on it.
Training takes hours on 2 cores; it runs niced so the machine stays usable.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

CHARADES = Path(__file__).resolve().parents[2] / "shared" / "data" / "charades"
TAG = "trained"  # cnm-train writes train.model_saved_path/TAG/model-best.pt
NICENESS = 10


def _tool(name: str) -> str:
    """The console script of this environment (beside this Python), else the name for PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def _run(command: list[str]) -> None:
    click.echo("+ " + " ".join(command), err=True)
    subprocess.run(["nice", "-n", str(NICENESS), *command], check=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--annotations", "annotations_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=CHARADES, show_default="../shared/data/charades",
              help="folder holding train.json, test.json and glove.pkl")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/charades-trained"),
              show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--seed", default=8, show_default=True)
def main(annotations_dir: Path, out: Path, epochs: int, seed: int) -> None:
    """Train the original Charades config on synthetic features of the real annotations; print the checkpoint."""
    train, test, glove = (annotations_dir / name for name in ("train.json", "test.json", "glove.pkl"))
    for path in (train, test, glove):
        if not path.is_file():
            raise click.UsageError(f"{path} does not exist (--annotations names the folder holding it)")
    out.mkdir(parents=True, exist_ok=True)
    features = out / "features.hdf5"
    if not features.exists():  # made from the seed 0 recipe of cnm-synth: the same archive every time
        _run([_tool("cnm-synth"), "--annotations", str(train), "--annotations", str(test), "--glove", str(glove),
              "--vocab-cap", "1111", "-o", str(features)])
    overrides = {"dataset.feature_path": features.resolve(), "dataset.vocab_path": glove.resolve(),
                 "dataset.train_data": train.resolve(), "dataset.test_data": test.resolve(),
                 # Charades has no validation split: pointing val at test makes cnm-train hold out training videos
                 "dataset.val_data": test.resolve(), "train.model_saved_path": out.resolve()}
    _run([_tool("cnm-train"), "--config-path", "charades_i3d", "--epochs", str(epochs), "--seed", str(seed),
          "--tag", TAG, *(f"--set={key}={os.fspath(value)}" for key, value in overrides.items())])
    click.echo(out / TAG / "model-best.pt")


if __name__ == "__main__":
    main()
