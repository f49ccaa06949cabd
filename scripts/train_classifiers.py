"""Train the bundled feature classifiers that the metrics use (FD features, confidence, class balance).

    python scripts/train_classifiers.py            # writes distill/assets/classifiers/{mnist16,digits8,digits16}/
    python scripts/train_classifiers.py digits16   # only that one
    python scripts/train_classifiers.py digits8 --epochs 1 --out /tmp/classifiers   # a quick trial elsewhere

Each is trained on a seeded 80% split and its accuracy on the held-out 20% goes in its card.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from distill.data import digits, mnist
from distill.evaluation.metrics import CLASSIFIER_DIR, FeatureClassifier, confident_share

torch.set_num_threads(2)


def shift_augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random translations by up to ``max_shift`` pixels (background -1 filled in)."""
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[..., dy: dy + x.shape[-2], dx: dx + x.shape[-1]]


def train_one(name: str, data, epochs: int, out: Path = CLASSIFIER_DIR, seed: int = 0) -> dict:
    train, holdout = data.split(len(data) // 5, seed=seed)
    torch.manual_seed(seed)
    network = FeatureClassifier()
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = (len(train) + 127) // 128
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        network.train()
        for index in torch.randperm(len(train), generator=generator).split(128):
            loss = F.cross_entropy(network(shift_augment(train.x[index], generator)), train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    network.eval()
    with torch.no_grad():
        probabilities = network(holdout.x).softmax(1)
    accuracy = float((probabilities.argmax(1) == holdout.labels).float().mean())
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file(network.state_dict(), folder / "model.safetensors")
    card = {"name": name, "data": data.name, "image_size": int(data.x.shape[-1]), "network_config": network.config,
            "train_size": len(train), "holdout_size": len(holdout), "holdout_accuracy": round(accuracy, 4),
            "holdout_confident_share": round(confident_share(probabilities), 4), "epochs": epochs,
            "train_seconds": round(time.perf_counter() - start, 1),
            "command": f"python scripts/train_classifiers.py {name}"}
    (folder / "card.json").write_text(json.dumps(card, indent=2))
    return card


# name -> (data, epochs); digits16 judges teachers adapted to the digits at MNIST's 16x16 (distill finetune)
CLASSIFIERS = {"mnist16": (lambda: mnist(16), 80), "digits8": (digits, 60), "digits16": (lambda: digits(16), 60)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(CLASSIFIERS)} (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="default: each classifier's own")
    parser.add_argument("--out", type=Path, default=CLASSIFIER_DIR, help="where the classifier folders go")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(CLASSIFIERS))
    if unknown:
        parser.error(f"unknown classifier {unknown[0]!r}; choose from {', '.join(CLASSIFIERS)}")
    for name in args.names or CLASSIFIERS:
        data, epochs = CLASSIFIERS[name]
        card = train_one(name, data(), args.epochs or epochs, args.out)
        print(f"{name}: held-out accuracy {card['holdout_accuracy']:.4f} on {card['holdout_size']} images, "
              f"confident share {card['holdout_confident_share']:.4f} ({card['train_seconds']} s) "
              f"-> {args.out / name}")


if __name__ == "__main__":
    main()
