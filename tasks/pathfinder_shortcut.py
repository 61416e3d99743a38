"""Shortcut check for the Pathfinder generator: can simple image statistics tell the label?

    python -m tasks.pathfinder_shortcut [--resolution 32] [--n 4000] [--seed 0]

Fits a logistic regression (numpy, full-batch gradient descent on standardised features) on
three statistics of each generated image — ink (lit pixels), distance between the two dots,
and its square — on n generated images, and prints its accuracy on n/4 others generated with
another seed (as the task's splits are). The dots are
found from the image alone (the only places where a 3x3 block is fully lit: curves are one pixel
wide and never touch). A faithful generator keeps this near 50%: whether the dots are connected
must be read from the curves, not from how much is drawn or how far apart the dots are.
"""

from __future__ import annotations

import argparse

import numpy as np

from tasks.pathfinder import generate


def dot_centres(img: np.ndarray) -> np.ndarray:
    """(res, res) -> (k, 2) row, col of every pixel whose 3x3 neighbourhood is fully lit."""
    on = img > 0
    full = np.ones((img.shape[0] - 2, img.shape[1] - 2), dtype=bool)
    for dr in range(3):
        for dc in range(3):
            full &= on[dr : dr + img.shape[0] - 2, dc : dc + img.shape[1] - 2]
    return np.argwhere(full) + 1


def features(images: np.ndarray) -> np.ndarray:
    """(N, res, res) -> (N, 3): ink, dot distance, dot distance squared."""
    rows = []
    for img in images:
        dots = dot_centres(img)
        dist = float(np.linalg.norm(dots[0] - dots[-1])) if len(dots) >= 2 else 0.0
        rows.append([(img > 0).sum(), dist, dist**2])
    return np.asarray(rows, dtype=np.float64)


def logistic_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                      steps: int = 2000) -> float:
    """Test accuracy of a logistic regression fitted on (x_train, y_train)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-9

    def design(x):
        return np.hstack([(x - mu) / sd, np.ones((len(x), 1))])

    xs, w = design(x_train), np.zeros(x_train.shape[1] + 1)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-xs @ w))
        w -= 0.5 * xs.T @ (p - y_train) / len(y_train)
    return float((((design(x_test) @ w) > 0).astype(int) == y_test).mean())


def shortcut_accuracy(n: int, resolution: int, seed: int = 0) -> float:
    """Logistic regression on image statistics: fit on n generated images, test on n // 4 others."""
    train_images, train_labels, _ = generate(n, resolution, seed, progress=False)
    test_images, test_labels, _ = generate(max(2, n // 4), resolution, seed + 1, progress=False)
    return logistic_accuracy(features(train_images), train_labels, features(test_images), test_labels)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    acc = shortcut_accuracy(args.n, args.resolution, args.seed)
    half = 1.96 * np.sqrt(0.25 / max(2, args.n // 4))
    print(f"pathfinder{args.resolution}: logistic regression on (ink, dot distance, distance^2), fitted on "
          f"{args.n} images, test accuracy on {max(2, args.n // 4)} others: {acc:.3f} "
          f"(chance 0.5 +- {half:.3f} at 95%)")
    return acc


if __name__ == "__main__":
    main()
