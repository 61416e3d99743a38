"""Shortcut check for the Pathfinder generator: can simple image statistics tell the label?

    python -m tasks.pathfinder_shortcut [--resolution 32] [--n 4000] [--seed 0]

Fits a logistic regression (numpy, full-batch gradient descent on standardised features) on
statistics of each generated image, on n generated images, and prints its accuracy on n/4
others generated with another seed (as the task's splits are). Two feature sets:
- "controlled": ink (lit pixels), distance between the two dots, and its square — the
  statistics the generator equalises by construction, so this must sit at chance;
- "extended": those plus statistics the generator does not control — ink within 2 pixels of the
  straight segment joining the dots, ink inside the dots' bounding box, number of 8-connected
  ink components, centre of the ink. A positive path tends to run near that segment, so these
  can beat chance: the number says how much of the task such a cheap cue solves. The dots are
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


def features(images: np.ndarray, extended: bool = False) -> np.ndarray:
    """(N, res, res) -> (N, 3) controlled statistics: ink, dot distance, its square; with
    `extended`, (N, 8): also ink near the dots' segment, ink in their box, components, ink centre."""
    from scipy import ndimage

    rows = []
    grid = np.stack(np.mgrid[: images.shape[1], : images.shape[2]], -1).astype(np.float64)  # (res, res, 2)
    for img in images:
        on = img > 0
        dots = dot_centres(img)
        a, b = (dots[0], dots[-1]) if len(dots) >= 2 else (np.zeros(2), np.zeros(2))
        dist = float(np.linalg.norm(a - b))
        row = [on.sum(), dist, dist**2]
        if extended:
            ab = (b - a).astype(np.float64)
            t = np.clip(((grid - a) @ ab) / max(ab @ ab, 1e-9), 0, 1)
            near = np.linalg.norm(grid - (a + t[..., None] * ab), axis=-1) <= 2
            (r0, r1), (c0, c1) = sorted((a[0], b[0])), sorted((a[1], b[1]))
            centre = np.argwhere(on).mean(0)
            row += [(on & near).sum(), on[r0 : r1 + 1, c0 : c1 + 1].sum(),
                    ndimage.label(on, structure=np.ones((3, 3)))[1], centre[0], centre[1]]
        rows.append(row)
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


def shortcut_accuracy(n: int, resolution: int, seed: int = 0) -> dict[str, float]:
    """Logistic regression on image statistics: fit on n generated images, test on n // 4 others.
    -> {"controlled": accuracy, "extended": accuracy}."""
    train_images, train_labels, _ = generate(n, resolution, seed, progress=False)
    test_images, test_labels, _ = generate(max(2, n // 4), resolution, seed + 1, progress=False)
    return {name: logistic_accuracy(features(train_images, ext), train_labels, features(test_images, ext),
                                    test_labels)
            for name, ext in (("controlled", False), ("extended", True))}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    acc = shortcut_accuracy(args.n, args.resolution, args.seed)
    half = 1.96 * np.sqrt(0.25 / max(2, args.n // 4))
    print(f"pathfinder{args.resolution}: logistic regression fitted on {args.n} generated images, test accuracy on "
          f"{max(2, args.n // 4)} others (chance 0.5 +- {half:.3f} at 95%):\n"
          f"  controlled statistics (ink, dot distance, distance^2): {acc['controlled']:.3f}\n"
          f"  extended (+ ink near the dots' segment, in their box, components, ink centre): {acc['extended']:.3f}")
    return acc


if __name__ == "__main__":
    main()
