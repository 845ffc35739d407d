"""PNG plots of an evaluation, drawn with matplotlib's Agg backend (no display needed).

Each function returns PNG bytes, so the caller writes them to the store (local or S3) and the
HTML report embeds them as they are.
"""

from __future__ import annotations

import io

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def loss_curves(history: list[dict], title: str = "") -> bytes:
    """Train and validation loss per epoch (from metrics.jsonl), best epochs marked."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if history:
        ep = [h["epoch"] for h in history]
        ax.plot(ep, [h["train"]["loss"] for h in history], "o-", label="train loss")
        ax.plot(ep, [h["val"]["loss"] for h in history], "s-", label="validation loss")
        best = [h["epoch"] for h in history if h.get("best")]
        if best:
            ax.plot(best, [next(h["val"]["loss"] for h in history if h["epoch"] == b) for b in best],
                    "*", ms=12, color="gold", mec="k", label="best so far")
        ax.legend()
        ax.set_xlim(min(ep) - 0.5, max(ep) + 0.5)
    else:
        ax.text(0.5, 0.5, "no training history (metrics.jsonl)", ha="center", va="center")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss curves")
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_heatmap(matrix: list[list[int]], labels: list[str], title: str = "") -> bytes:
    m = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    size = 3.2 + 0.35 * k
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(k), labels, rotation=45 if k > 2 else 0, ha="right" if k > 2 else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    hi = m.max() if m.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8 if k > 4 else 11,
                    color="white" if m[i, j] > hi / 2 else "black")
    ax.set_title(title or "confusion matrix")
    return _png(fig)


def roc_curve(roc: dict, auroc: float | None, ci: list | None, title: str = "") -> bytes:
    """Observed ROC curve with its 95 % patient-bootstrap band of TPR."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    if roc.get("lo") is not None:
        ax.fill_between(roc["grid"], roc["lo"], roc["hi"], alpha=0.25, label="95 % CI (patient bootstrap)")
    if roc.get("fpr"):
        label = "ROC" if auroc is None else f"AUROC {auroc:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        ax.plot(roc["fpr"], roc["tpr"], lw=2, label=label)
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title or "ROC curve")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def example_grid(images: np.ndarray, true: list[str], pred: list[str], prob: list[float],
                 ood: list[bool] | None = None, title: str = "", prob_name: str = "p") -> bytes:
    """Images with their true label, predicted label and a probability (red when wrong):
    `prob_name` says which, e.g. "p(COVID-19)" for a binary run."""
    n = len(images)
    cols = min(4, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        right = true[i] == pred[i]
        flag = " OOD" if ood is not None and ood[i] else ""
        ax.set_title(f"true: {true[i]}\npred: {pred[i]}, {prob_name} {prob[i]:.2f}{flag}", fontsize=8,
                     color="darkgreen" if right else "firebrick")
    if title:
        fig.suptitle(title)
    return _png(fig)
