"""``python -m benchmarks.untrained --config charades_i3d --vocab glove.pkl -o model.pt``: a checkpoint of a
shipped config with seeded random weights, in the original format.

Speed does not depend on the weights, so the model users deploy (the original Charades config: d=256,
3+3 layers, 1024-d frames) can be benchmarked without training it for hours first; its accuracy figures
then only show the drift between engines, not how well it localizes.
"""
from __future__ import annotations

from pathlib import Path

import click
import torch

from cnm_runtime.text import Vocabulary, load_glove
from cnm_train.checkpoint import build_model, save_checkpoint
from cnm_train.config import SHIPPED_CONFIGS, inject_model_keys, load_config


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_name", type=click.Choice(sorted(SHIPPED_CONFIGS)), default="charades_i3d",
              show_default=True)
@click.option("--vocab", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="glove.pkl whose counter gives the kept words")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True)
def main(config_name: str, vocab: Path, out: Path, seed: int) -> None:
    """Write an untrained checkpoint of CONFIG over the words of VOCAB."""
    config = load_config(config_name)
    config["dataset"]["vocab_path"] = str(vocab.resolve())
    vocabulary = Vocabulary.from_glove(load_glove(vocab), int(config["dataset"]["vocab_size"]))
    torch.manual_seed(seed)
    model = build_model(inject_model_keys(config, vocabulary.size))
    save_checkpoint(out, model, config, num_updates=0)
    click.echo(out)


if __name__ == "__main__":
    main()
