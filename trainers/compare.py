"""`--mode compare --runs A B ... [--out PATH]`: several runs side by side, one table and one figure.

GAN runs are read from their `evaluation.json` (run level: mean and std over rounds when the run
has several), or from the eval_* numbers their training summary.json holds (every GAN round is
evaluated at its end); other runs (classifiers) contribute the numbers of their `summary.json`. Typical
uses: scratch vs fine-tuned, sensor vs source representation, one run's rounds.

For GAN runs scored on the same held-out trials as the first run, the report also gives each decoder's
train-on-synthetic difference to the first run with a 95% paired bootstrap interval: both decoders are
scored on the same trials, so a variant is only "better" when the interval clears zero.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from utils.checkpoint import write_json
from utils.errors import UserError

# Headline metrics drawn in the figure: (key, label, better).
FIGURE_METRICS = [("eval_tstr_cnn", "TSTR accuracy (CNN)", "higher"),
                  ("eval_tstr_csp", "TSTR accuracy (CSP+LDA)", "higher"),
                  ("eval_frechet", "Frechet distance", "lower"),
                  ("eval_swd", "sliced Wasserstein", "lower"),
                  ("eval_psd_db", "log-PSD difference (dB)", "lower"),
                  ("eval_aug_gain_10", "augmentation gain @10/class", "higher"),
                  ("eval_nn_ratio", "NN distance ratio", "~1"),
                  ("eval_std_ratio", "std ratio", "~1")]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e.__class__.__name__})") from None


def read_run(path) -> dict:
    """{label, run_dir, model_name, kind, values: {key: (mean, std or None)}} for one run folder."""
    from utils.runs import read_run_config, resolve_run_dir

    run_dir = resolve_run_dir(path)
    cfg = read_run_config(run_dir)
    ev = run_dir / "evaluation.json"
    values: dict[str, tuple[float, float | None]] = {}
    if ev.is_file():
        data = _read_json(ev)
        if "per_round" in data:  # several rounds: mean and std
            for k, v in data.items():
                if k.endswith("_mean") and isinstance(v, (int, float)):
                    values[k[:-5]] = (float(v), float(data.get(k[:-5] + "_std", math.nan)))
        else:
            values = {k: (float(v), None) for k, v in data["headline"].items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
        kind = "gan"
    elif (run_dir / "summary.json").is_file():
        data = _read_json(run_dir / "summary.json")
        for k, v in data.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith(("_mean", "_std")):
                values[k] = (float(v), None)
        for k, v in data.items():
            if k.endswith("_mean") and isinstance(v, (int, float)):
                values[k[:-5]] = (float(v), float(data.get(k[:-5] + "_std", math.nan)))
        kind = "gan" if any(k.startswith("eval_") for k in values) else "other"
        if kind == "other" and cfg.get("model_name") != "classifier":
            raise UserError(f"compare: {run_dir} has no evaluation.json; run "
                            f"`python main.py --mode evaluate --checkpoint {run_dir}` first")
    else:
        raise UserError(f"compare: {run_dir} has neither evaluation.json nor summary.json (unfinished run?)")
    tags = [cfg.get("model_name", "?")]
    if cfg.get("model_name") in ("gpt2xcnn", "gpt2scnn"):
        tags.append("fine-tuned" if cfg.get("fine_tune", True) else "scratch")
    tags.append(cfg.get("representation", "sensor"))
    if cfg.get("rounds", 1) > 1:
        tags.append(f"{cfg['rounds']} rounds")
    return {"label": f"{run_dir.name} ({', '.join(tags)})", "run_dir": str(run_dir),
            "model_name": cfg.get("model_name"), "kind": kind, "values": values}


def _cell(v) -> str:
    if v is None:
        return "-"
    mean, std = v
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.4g}" + (f" +- {std:.2g}" if std is not None and math.isfinite(std) else "")


def table_markdown(runs: list[dict]) -> str:
    keys = []
    for r in runs:
        keys += [k for k in r["values"] if k not in keys]
    lines = ["| metric | " + " | ".join(r["label"] for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_cell(r["values"].get(k)) for r in runs) + " |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in FIGURE_METRICS if any(m[0] in r["values"] for r in runs)]
    if not metrics:
        # No GAN evaluation among the runs: draw whatever numbers they share.
        shared = set.intersection(*(set(r["values"]) for r in runs))
        metrics = [(k, k, "") for k in sorted(shared) if k not in ("round", "seed", "rounds")][:8]
    if not metrics:
        return None
    cols = min(4, len(metrics))
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    x = np.arange(len(runs))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label, better) in zip(axes.flat, metrics):
        means = [r["values"].get(key, (math.nan, None))[0] for r in runs]
        errs = [r["values"].get(key, (math.nan, None))[1] or 0.0 for r in runs]
        ax.bar(x, means, yerr=errs, color=[colors[i % len(colors)] for i in range(len(runs))], capsize=3)
        # References from the first run that has them (same target data -> same references).
        for suffix, style, name in (("_phase", "--", "phase-random"), ("_floor", ":", "real floor")):
            ref = next((r["values"][key + suffix][0] for r in runs if key + suffix in r["values"]), None)
            if ref is not None and math.isfinite(ref):
                ax.axhline(ref, color="k", ls=style, lw=1, label=name)
        ax.set_title(label + (f" ({better})" if better else ""), fontsize=9)
        ax.set_xticks(x, [str(i + 1) for i in range(len(runs))])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle("Runs: " + "; ".join(f"{i + 1} = {r['label']}" for i, r in enumerate(runs)), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def paired_differences(runs: list[dict], seed: int = 0) -> list[dict]:
    """Train-on-synthetic of every later GAN run against the first, trial by trial on the held-out trials
    both were scored on (rounds averaged per trial first). Runs on other held-out trials, or evaluated
    before per-trial correctness was kept (session 22), are skipped with the reason."""
    from trainers.evaluate import TSTR_DECODERS, evaluated_rounds, mean_correctness
    from utils.metrics import margin_shortfall

    def trials(run):
        rounds = [r for r in evaluated_rounds(run["run_dir"]) if "candidates" in r and "test_subject" in r]
        return (mean_correctness([r["candidates"] for r in rounds]), rounds[0]["test_subject"]) if rounds else ({}, None)

    base, base_subj = trials(runs[0])
    rows = []
    for run in runs[1:]:
        if run["kind"] != "gan":
            continue
        other, subj = trials(run)
        if not base or not other:
            rows.append({"label": run["label"], "skipped": "no per-trial results (evaluated before session 22: "
                                                             "run --mode evaluate again)"})
            continue
        if subj != base_subj:
            rows.append({"label": run["label"], "skipped": "scored on other held-out trials than the first run"})
            continue
        for key, _, name in TSTR_DECODERS:
            if key in base and key in other:
                u = margin_shortfall(other[key], base[key], share=1.0, groups=subj, seed=seed)
                rows.append({"label": run["label"], "decoder": name, "first": float(base[key].mean()),
                             "this": float(other[key].mean()), **u})
    return rows


def paired_markdown(rows: list[dict], first: str) -> str:
    lines = [f"## Train-on-synthetic against the first run ({first}), paired on the same held-out trials", "",
             "| run | decoder | first run | this run | difference, 95% interval | reading |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['label']} | - | - | - | - | {r['skipped']} |")
            continue
        reading = ("higher beyond the noise" if r["lo"] > 0 else "lower beyond the noise" if r["hi"] < 0
                   else f"within the noise of {r['n']} trials")
        lines.append(f"| {r['label']} | {r['decoder']} | {r['first']:.3f} | {r['this']:.3f} | "
                     f"{r['difference']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] | {reading} |")
    return "\n".join(lines)


def compare(run_paths, out: Path) -> dict:
    runs = [read_run(p) for p in run_paths]
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"compare: output folder {out}: not writable ({e.strerror or e})") from None
    md = table_markdown(runs)
    fig = plot(runs, out / "compare.png")
    text = ["# Run comparison", "", md, ""]
    paired = paired_differences(runs) if runs[0]["kind"] == "gan" and len(runs) > 1 else []
    if paired:
        text += [paired_markdown(paired, runs[0]["label"]), ""]
    if fig:
        text.append("![comparison](compare.png)")
    (out / "compare.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    result = {"runs": [{"label": r["label"], "run_dir": r["run_dir"], "model_name": r["model_name"],
                        "values": {k: {"mean": v[0], "std": v[1]} for k, v in r["values"].items()}} for r in runs],
              "paired_tstr": paired, "figure": str(fig) if fig else None}
    write_json(out / "compare.json", result)
    return result


def main(args) -> int:
    out = args.out
    if out is None:
        from config.schema import load_config

        out_dir = load_config(args.config, args.overrides)["output_dir"]
        out = Path(out_dir) / "compare" / time.strftime("%Y%m%d-%H%M%S")
    compare(args.runs, Path(out))
    print((Path(out) / "compare.md").read_text())
    print(f"comparison: {Path(out) / 'compare.md'}, {Path(out) / 'compare.json'}, {Path(out) / 'compare.png'}")
    return 0
