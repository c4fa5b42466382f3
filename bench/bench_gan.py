"""GAN benchmarks: training throughput / FLOP efficiency, and transfer (pretrained vs scratch).

    python bench/bench_gan.py speed    [--threads N] [--steps 10] [--subjects 10] [--set KEY=VALUE ...]
    python bench/bench_gan.py transfer [--threads N] [--pretrain-epochs 30] [--epochs 20] [--every 2]
                                       [--set KEY=VALUE ...] [--source-set KEY=VALUE ...]
    python bench/bench_gan.py quality RUN_DIR [--repeats 4] [--per-class 150] [--band-per-class 1000]
    python bench/bench_gan.py diagnose RUN_DIR [--per-class 300]
    python bench/bench_gan.py cnn RUN_DIR [--per-class 1000] [--repeats 3]
    python bench/bench_gan.py transforms RUN_DIR [--repeats 3]
    python bench/bench_gan.py ceiling RUN_DIR [--repeats 3]
    python bench/bench_gan.py condense RUN_DIR [--repeats 3] [--iters 400] [--resets 3,10,20,100] [--lr 0.01]
    python bench/bench_gan.py counts RUN_DIR [--counts 75,150,300,1000,3000] [--repeats 3] [--set KEY=VALUE ...]

speed: one training step of the default gpt2cgan config (critic update with gradient penalty,
plus the generator update every gan.critic_steps batches) on random trials of the default data
shape. Reports real trials consumed per second, the step's FLOPs counted with
torch.utils.flop_counter.FlopCounterMode, the achieved GFLOP/s, and that as a fraction of the
dense float32 matmul GFLOP/s measured in the same process with the same thread count. Step times
are medians of --steps single steps, the matmul rate the median of rates measured between them.

transfer: pretrains gpt2cgan on the source data, then trains on the target data (the `data`
section) for --epochs epochs twice, once starting from the pretrained networks and once from
scratch, and records quality every --every epochs: CSP+LDA accuracy on real held-out trials of
a model trained on generated trials (TSTR), mean relative mu/beta power error at C3/Cz/C4 against
the held-out run and against the target training trials, and the mu lateralisation at C3/C4.
The source is the target config with the --source-set overrides (default
`pretrain_data.task=execution`: executed runs 3/7/11 -> imagined 4/8/12). Cross-subject, e.g.
S001-S008 -> S009: `--set 'data.subjects=[9]' --source-set 'pretrain_data.subjects=[1,2,3,4,5,6,7,8]'`;
`--target-per-class K` keeps only K target training trials per class (the real-trained CSP+LDA
reference then uses the same K).
The pretrained branch is restarted on the target as the fine-tuning trainers do (`finetune.reinit`,
e.g. `--set finetune.reinit=null` to keep everything pretrained). At every check (and before the
first target epoch) the generator is scored as a user would get it had training stopped there:
calibrated on the target training trials (`gan.calibrate`); `band_error_raw` is the uncalibrated
error. Writes both curves.

quality: TSTR (CSP+LDA trained on generated trials, tested on the real held-out run) next to the
same classifier trained on real trials, mu/beta power errors at C3/Cz/C4, mu lateralisation and
the nearest-neighbour distance ratio (utils/metrics.py) for one finished GAN run; the band power
also against the generator's own training trials, and the training trials against the held-out
ones (the session drift no generator of the training data can remove), and the held-out trials resampled
with replacement against themselves (median and 90th percentile of the worst cell: how far that cell moves
with nothing but which held-out trials were recorded). A run with evaluation.subjects is judged on those
subjects, its generator drawn for them. Band power and lateralisation
are also reported on --band-per-class generated trials per class (`*_n` keys): with a realistic
trial-to-trial spread the class-mean power of ~120 trials moves by several percent from one generated
set to the next, and a generator's class means are what the target is about. With --repeats
N it also reports the evaluation module's CNN and CSP+LDA trained on N fresh generated sets (and
the CNN trained on the real pool with the same seeds), mean and std.

diagnose: why train-on-synthetic does or does not transfer, in the log band power features of the
generator's own objective (channels x bands, z-scored by the real training trials). How far apart the
classes lie in real within-class deviations (Mahalanobis, Ledoit-Wolf covariance of the real training
trials) for generated, training and held-out trials, with p (1/n_left + 1/n_right), what sampling noise
alone gives for independent trials and an exact covariance (subjects and shrinkage make it lower); that split
by quartiles of the real covariance's eigenvalues; the generated within-class variance along the same
directions relative to the real one; a shrinkage LDA trained on generated or real trials and tested on
the other sets; and the contrast term (0 = the real class difference, 1 = none) of the kept generator,
evaluated on fresh training-style batches and through the training-time moving average, next to what
metrics.jsonl recorded in the last epoch. Then CSP+LDA taken apart (`csp_*`, three generated sets of
--per-class trials): CSP filters and LDA each fitted on real training or generated trials, tested on the
held-out trials, so a failure can be put on the generated spatial filters or on the generated feature
distribution; and the whitened class-covariance difference W (C_right - C_left) W (W = the real training
trials' mean covariance^-1/2, what CSP's extreme eigenvalues come from): its norm and its cosine between
generated, training and held-out trials, and between two random halves of the training trials.
`spread_*`: within-class variance ratios along directions fitted on one set and measured on another
(unbiased, unlike variances along a sample's own eigenvectors): the generated set's thin half and its
discriminant, measured on the training and held-out trials; and, to show the in-sample bias, the training
trials' own thin half measured in-sample against run 12.

cnn: where the train-on-synthetic CNN (the evaluation module's) takes its class signal from. Trained
on generated trials (as many per class as the real pool holds, and --per-class), it is scored on
held-out generated trials, on the real trials the generator was trained on (accuracy and ROC AUC)
and on the real held-out trials: a CNN that separates generated trials and the training pool but not
the held-out run has learnt the pool's own class structure, sampling noise included, which the
generator reproduced. Trained on the real pool, it is scored on the held-out run and on generated
trials (does the generated data carry what a real-trained CNN uses?). And trained on surrogates of
the real pool, scored on the held-out run: phase-randomised copies (each trial's cross-spectrum
exact, its time structure gone: the best a generator of second-order statistics could offer) and
copies circularly shifted by up to 0.25 s or 1 s (how time-locked the real CNN's signal is), and
short-time phase-randomised copies (0.25, 0.5, 1 s frames: each frame's cross-spectrum kept, the power
time course with it, the waveform within a frame not). Both CNNs are also scored on phase-randomised
copies of what they are tested on: a class signal that survives it is stationary (each trial's
cross-spectrum), one that does not is in the time structure; and on copies whose class-mean power
spectrum per channel is made the class average (`*_class_spectra_equalised`: does the CNN read per-channel
band power at all?). The real-trained CNN is also scored on run 12 with one second at a time
phase-randomised (`test_phase_randomised_A-Bs`: the rest of the trial, and the coarse power time course,
kept). Then the same questions for two classic
decoder families (`decoder_families`): band-power LDA and Riemannian tangent space, trained on the real
pool or on generated trials (as many per class as the pool holds).
Each number is a mean over --repeats classifier seeds (and generated sets).

transforms: would generated trials decode run 12 better with a statistic of the real pool imposed on them
after the fact? Each of --repeats generated sets (as many trials per class as the pool holds) trains the CNN,
CSP+LDA, band-power LDA and tangent space as drawn (`raw`), after `CrossSpectralColouring` (the class-mean
cross-spectral matrices made the real pool's, bin by bin: the spatial analogue of gan.calibrate=class) and after
`SubjectEnvelope` (each subject's real class-averaged time course of theta, mu and beta power imposed). Also
reports, per subject, how far the real mu time course swings and how the generated one correlates with it,
how much of its own class difference the per-subject targets keep, the cosine of its whitened class-covariance
difference between its real training runs, its held-out run and its generated trials, and CSP+LDA on its held-out
trials trained on its real or its generated trials (300 per class); and the Fréchet distance (the evaluation's,
candidate against one half of the held-out trials, mean of 4 draws) with and without the subject envelope.
An edit that raises train-on-synthetic names an objective worth adding to the generator.

ceiling: could any generator of a given kind meet the CNN target on this pool? The evaluation's CNN is trained
(--repeats seeds, default 3) on the real pool itself, on its surrogates (phase-randomised: each trial's
cross-spectrum exact; short-time phase-randomised at 0.25, 0.5 and 1 s frames: each frame's cross-spectrum, and
so the power time course, exact) and on the run's generated trials (as many per class as the pool holds), and
scored on the held-out trials against the evaluation's bar (80% of its real-trained CNN's margin). For each:
mean accuracy, min and max over seeds, and the mean's difference to the bar with the evaluation's paired 95%
bootstrap interval (`*_minus_bar`, `_lo`, `_hi`; `evaluation_cnn_acc_test` is the evaluation's own real-trained
reference, `evaluation.reference_seeds` CNNs averaged per trial, `real_trained_*` the same CNN retrained on the
pool with other seeds). A surrogate that misses the bar beyond
the noise bounds every generator that reproduces no more than it keeps. Where the evaluation's real-trained CNN
is at chance there is no bar, and `*_minus_bar` reads as the margin over its accuracy.

condense: how far the generator's gradient-matching objective (gan.grad_match_weight,
trainers/gradient_matching.py) can take a decoder when nothing constrains the trials. The run's generated trials
(as many per class as the pool holds) are made free tensors and moved by Adam (--lr, --iters steps) to match the
probe CNN's gradient on the real pool, for each probe restart period in --resets, as dataset condensation by
gradient matching does (Zhao et al. 2021); the evaluation's CNN trained on the result (--repeats seeds) is
scored against the bar as in `ceiling`, with the nearest-neighbour distance ratio of the condensed trials (are
they copies of the pool?). What this reaches bounds what the term can give a generator; what the generator
reaches below it is the generator's constraint. `match_distance_*`: the term's distance along a probe trajectory
of 100 steps restarted every 20, for sets as large as the held-out run (the held-out trials: the level sampling
noise alone leaves an independent real sample; fresh generated sets; random subsets of the pool) and for
generated sets 2 and 8 times as large (what stays as they grow is the generator's bias, not noise). `--iters 0`
gives these distances only.

counts: how CSP+LDA and band-power LDA trained on generated trials depend on how many are drawn. For each
count in --counts, --repeats fresh draws of that many trials per class train each decoder, scored on the held-out
trials of the run's config (its evaluation.subjects honoured; `--set evaluation.subjects=null` judges a run on
all its subjects): mean, min and max over the draws, next to the same decoders trained on the real pool. The
spread over draws is the part of a single evaluation's number that is the generated draw's luck.

Results: a table on stdout and JSON in bench/results/gan.json (speed), gan_transfer.json (with both
curves drawn in gan_transfer.png), gan_quality.json, gan_diagnose.json, gan_cnn.json, gan_transforms.json, gan_ceiling.json, gan_condense.json or gan_counts.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from report import RESULTS, write_results  # noqa: E402  (bench/ is the script's folder)


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def default_step(root: Path, overrides: list[str], n_subjects: int):
    """The default gpt2cgan training step of the checkout at `root` (whose config, models and trainers
    are imported: `bench_step_ab.py` puts another checkout first on sys.path) on random trials of the
    default data shape: (cfg, G, D, step), step(gen_step) one critic update plus, if gen_step, one
    generator update."""
    from config.schema import load_config
    from trainers.gan import SpectralTargets, _train_step, build_models

    cfg = load_config(Path(root) / "config" / "config.json", ["model_name=gpt2cgan"] + overrides)
    n_chans, n_times, sfreq, bs = 21, 640, 160.0, cfg["batch_size"]
    torch.manual_seed(0)
    X = torch.randn(4 * bs, n_chans, n_times)
    y = torch.arange(4 * bs) % 2
    # Subject-conditioned like the default data (gan.subject_condition, S001-S010) unless --subjects < 2.
    subjects = (np.arange(4 * bs) // 2) % n_subjects + 1 if n_subjects >= 2 and cfg["gan"]["subject_condition"] \
        else None
    G, D = build_models(cfg, n_chans, n_times, sfreq, subjects=subjects)
    s_tr = None if subjects is None else G.subject_index(subjects)
    targets = SpectralTargets(X, y, sfreq, subject=s_tr, subject_count=G.config.subject_count,
                              envelope=cfg["gan"]["envelope_weight"] > 0)
    try:  # the trainer's optimisers; checkouts before session 11 built plain Adam in fit_gan
        from trainers.gan import build_optimizers
        opt_g, opt_d = build_optimizers(cfg, G, D)
    except ImportError:
        opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.5, 0.9))
    idx = np.arange(bs)
    local = slice(0, bs)

    def step(gen_step: bool):
        _train_step(cfg, G, D, opt_g, opt_d, targets, X, y, s_tr, idx, local, "cpu", None, 0, 0, gen_step)

    return cfg, G, D, step


def speed(args) -> dict:
    from torch.utils.flop_counter import FlopCounterMode, _FlopCounterMode

    cfg, G, D, step = default_step(ROOT, args.set, args.subjects)
    bs = cfg["batch_size"]
    flops = {}
    for kind in (False, True):
        # FlopCounterMode's module tracker breaks torch.autograd.grad (the gradient penalty), so
        # only its dispatch-level counter is entered: same FLOP formulas, no per-module table.
        fc = FlopCounterMode(display=False)
        with _FlopCounterMode(fc):
            step(kind)
        flops[kind] = fc.get_total_flops()
    k = cfg["gan"]["critic_steps"]
    # Medians of single steps, and of matmul rates measured between them: on a shared machine a
    # burst of other work hits a few steps, and a mean over all of them would carry it.
    times, mms = {False: [], True: []}, [matmul_gflops()]
    for kind in (False, True):
        step(kind)
        for i in range(args.steps):
            t = time.perf_counter()
            step(kind)
            times[kind].append(time.perf_counter() - t)
            if i % 5 == 4:
                mms.append(matmul_gflops())
    times = {kind: float(np.median(v)) for kind, v in times.items()}
    # One "cycle" = k critic steps, the last of which also updates the generator.
    cycle_s = (k - 1) * times[False] + times[True]
    cycle_flops = (k - 1) * flops[False] + flops[True]
    mm = float(np.median(mms))
    achieved = cycle_flops / cycle_s / 1e9
    return {"threads": torch.get_num_threads(), "batch_size": bs, "critic_steps": k,
            "subjects": G.config.subject_count, "overrides": args.set,
            "generator_params": sum(p.numel() for p in G.parameters()),
            "critic_params": sum(p.numel() for p in D.parameters()),
            "critic_step_s": times[False], "critic_plus_generator_step_s": times[True],
            "critic_step_gflop": flops[False] / 1e9, "critic_plus_generator_step_gflop": flops[True] / 1e9,
            "samples_per_s": k * bs / cycle_s, "achieved_gflops": achieved, "matmul_gflops": mm,
            "fraction_of_matmul": achieved / mm,
            "epoch_s_estimate_default_data": cycle_s / k * 15}


def transfer(args) -> dict:
    import copy
    import dataclasses

    import trainers.gan as tg
    from config.schema import load_config
    from data.dataset import Standardizer, load_splits, pretrain_data_cfg
    from trainers.evaluate import Evaluator
    from trainers.finetune import adapt_to_target
    from trainers.generate import load_generator
    from utils import metrics as M
    from utils.runtime import seed_everything

    out = Path(args.out)
    base = ["model_name=gpt2cgan", f"output_dir={out}", "gan.figure_every=1000"] + args.set
    source = args.source_set or ["pretrain_data.task=execution"]
    cfg_src = load_config(ROOT / "config" / "config.json", base + source + [f"epochs={args.pretrain_epochs}"])
    cfg_tgt = load_config(ROOT / "config" / "config.json", base + [f"epochs={args.epochs}"])
    tg._evaluate = lambda *a, **k: {}
    seed = cfg_src["seed"]

    # 1. pretraining on the source task
    t = time.perf_counter()
    seed_everything(seed)
    src = load_splits(cfg_src, pretrain_data_cfg(cfg_src), seed=seed, progress=False).pooled()  # as the trainers do
    pre_dir = out / "pretrain"
    pre_dir.mkdir(parents=True, exist_ok=True)
    if args.reuse_pretrain and (pre_dir / "generator.safetensors").is_file():
        print(f"reusing the pretrained networks in {pre_dir}")
    else:
        std_src = Standardizer.fit(src.train.X, cfg_src["data"]["normalize"])
        g, d = tg.build_models(cfg_src, src.train.n_chans, src.train.n_times, src.train.sfreq,
                               X_init=std_src.transform(src.train.X), subjects=src.train.subject)
        tg.fit_gan(cfg_src, pre_dir, torch.device("cpu"), seed, False, src, std_src, g, d,
                   progress=not args.quiet, meta_extra={"data": src.info})
    pretrain_s = time.perf_counter() - t

    tgt = load_splits(cfg_tgt, seed=seed, progress=False).pooled()  # as the trainers do
    if args.target_per_class:  # the few-trial case: K random training trials per class of the target
        rng = np.random.default_rng(seed)
        keep = np.zeros(len(tgt.train), bool)
        for c in (0, 1):
            keep[rng.permutation(np.flatnonzero(tgt.train.y == c))[:args.target_per_class]] = True
        tgt = dataclasses.replace(tgt, train=tgt.train.subset(keep))
    real_csp = M.csp_lda_accuracy(tgt.train.X, tgt.train.y, tgt.test.X, tgt.test.y)
    # At least 100 per class: a single target subject has ~12 training trials per class, too few
    # for a band-power estimate that is not mostly sampling noise.
    n_gen = max(int(np.bincount(tgt.train.y).max()), args.per_class_transfer)
    n_batches = -(-len(tgt.train) // cfg_tgt["batch_size"])

    # The Frechet distance of the evaluation module (features of a CNN fitted once on the real target
    # pool, against the second half of the held-out run), with its real floor (first half).
    ev = Evaluator(cfg_tgt, "cpu", progress=False)
    ev.fixed_classifier()
    r = ev.real
    frechet_floor = M.frechet_distance(ev.features(r.X_a), ev.features(r.X_b))
    ytr = torch.from_numpy(tgt.train.y.astype(np.int64))

    def quality_at(gen, std, Xtr, epoch, row) -> dict:
        """The generator as a user would get it if training stopped here: calibrated on the target
        training trials (gan.calibrate), then scored. The raw band error is the uncalibrated one."""
        fake, yf = tg.generate(gen, n_gen, seed + 1, "cpu")
        raw = M.band_power_errors(std.inverse(fake.numpy()), yf.numpy(), tgt.test.X, tgt.test.y, tgt.train.sfreq,
                                  tgt.train.ch_names)["mean_abs"]
        gen = copy.deepcopy(gen)
        tg.calibrate_spectrum(gen, Xtr, ytr, tgt.train.sfreq, cfg_tgt["gan"]["calibrate"], seed + 2, "cpu")
        fake, yf = tg.generate(gen, n_gen, seed + 1, "cpu")
        Xg, yg = std.inverse(fake.numpy()), yf.numpy()
        bp = M.band_power_errors(Xg, yg, tgt.test.X, tgt.test.y, tgt.train.sfreq, tgt.train.ch_names)
        bp_tr = M.band_power_errors(Xg, yg, tgt.train.X, tgt.train.y, tgt.train.sfreq, tgt.train.ch_names)
        lat = M.lateralization(Xg, yg, tgt.train.sfreq, tgt.train.ch_names)
        sub = np.concatenate([np.flatnonzero(yg == c)[:n] for c, n in enumerate(r.counts_a)])
        return {"epoch": epoch, "generator_steps": epoch * n_batches // cfg_tgt["gan"]["critic_steps"],
                "tstr_csp": M.csp_lda_accuracy(Xg, yg, tgt.test.X, tgt.test.y),
                "band_error": bp["mean_abs"], "band_error_vs_train": bp_tr["mean_abs"], "band_error_raw": raw,
                "frechet": M.frechet_distance(ev.features(Xg[sub]), ev.features(r.X_b)),
                "mu_lat_C3_db": lat.get("C3"), "mu_lat_C4_db": lat.get("C4"),
                "moment_loss": row.get("moment_loss"), "contrast_loss": row.get("contrast_loss")}

    def curve(name, std, Xtr):
        """Xtr: the target training trials in the branch's generator units (std)."""
        rows = []

        def on_epoch(epoch, gen, row):
            if epoch % args.every and epoch not in (0, args.epochs):
                return {}
            with torch.random.fork_rng():  # scoring must not move the training run's RNG
                q = quality_at(gen, std, Xtr, epoch, row)
            rows.append(q)
            print(f"  {name:10s} epoch {epoch:3d}  TSTR {q['tstr_csp']:.3f}  band err {q['band_error']:.3f} "
                  f"(vs train {q['band_error_vs_train']:.3f}, uncalibrated {q['band_error_raw']:.3f})  "
                  f"Frechet {q['frechet']:.0f}  moment {q['moment_loss'] or float('nan'):.3f}  "
                  f"mu lat C3 {q['mu_lat_C3_db']:+.2f} dB C4 {q['mu_lat_C4_db']:+.2f} dB", flush=True)
            return {}
        return rows, on_epoch

    results = {}
    for name in [b for b in ("pretrained", "scratch") if b not in args.skip]:
        seed_everything(seed)
        if name == "pretrained":
            b = load_generator(pre_dir, with_critic=True)
            g, d, std = b.generator, b.critic, b.standardizer
            g.train().requires_grad_(True)
            d.train().requires_grad_(True)
            Xt = std.transform(tgt.train.X)
            reinit = adapt_to_target(g, d, cfg_tgt, src.info, tgt.info, tgt.train, std)
            print(f"pretrained networks restarted on the target: {reinit or 'nothing'}")
        else:
            std = Standardizer.fit(tgt.train.X, cfg_tgt["data"]["normalize"])
            Xt = std.transform(tgt.train.X)
            g, d = tg.build_models(cfg_tgt, tgt.train.n_chans, tgt.train.n_times, tgt.train.sfreq, X_init=Xt,
                                   subjects=tgt.train.subject)
        rows, cb = curve(name, std, torch.from_numpy(Xt))
        rd = out / name
        rd.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        cb(0, g, {})  # the starting point, before any training on the target
        tg.fit_gan(cfg_tgt, rd, torch.device("cpu"), seed, False, tgt, std, g, d, progress=False, on_epoch=cb)
        results[name] = {"curve": rows, "train_s": time.perf_counter() - t,
                         **({"reinit": reinit} if name == "pretrained" else {})}
    return {"threads": torch.get_num_threads(), "pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs,
            "finetune_reinit": cfg_tgt["finetune"]["reinit"],  # the setting; "auto" is resolved per run
            "pretrain_s": pretrain_s, "real_trained_csp": real_csp, "overrides": args.set, "source_overrides": source,
            "source_train_trials": len(src.train), "target_train_trials": len(tgt.train),
            "frechet_floor": frechet_floor, **results}


def plot_transfer(res: dict, path: Path) -> None:
    """Both curves of a transfer run, one panel per quality number."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("tstr_csp", "train-on-synthetic CSP+LDA"), ("band_error", "band-power error vs held-out run"),
              ("band_error_vs_train", "band-power error vs training trials"), ("frechet", "Frechet distance"),
              ("moment_loss", "moment loss (training objective)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    fig.subplots_adjust(left=0.04, right=0.99, top=0.82, bottom=0.16, wspace=0.3)
    for ax, (key, title) in zip(axes, panels):
        for name, color in (("pretrained", "tab:red"), ("scratch", "tab:blue")):
            pts = [(q["epoch"], q[key]) for q in res.get(name, {}).get("curve", []) if q.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=color, label=name)
        if key == "tstr_csp":
            ax.axhline(res["real_trained_csp"], color="k", ls="--", lw=0.8, label="real-trained")
        if key == "frechet" and "frechet_floor" in res:
            ax.axhline(res["frechet_floor"], color="k", ls=":", lw=0.8, label="real floor")
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("target epoch")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"transfer: source {' '.join(res.get('source_overrides', []))}; target {res.get('target_train_trials')} "
                 "training trials; generators calibrated on the target at every check", fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def quality(args) -> dict:
    """Quick quality of a finished GAN run against the real held-out trials of its config's data."""
    import json as _json

    from data.dataset import load_splits
    from trainers.generate import gan_folder, load_generator
    from utils import metrics as M

    folder = gan_folder(args.run)
    b = load_generator(folder)
    cfg = b.cfg
    sp = load_splits(cfg, cfg["data"], seed=cfg["seed"], progress=False).pooled()  # the GAN's training trials
    judged = cfg["evaluation"].get("subjects")
    if judged:  # evaluation.subjects: real trials of those subjects, generated trials drawn for them
        b.only_subjects(judged)
        sp.train, sp.test = (part.subset(np.isin(part.subject, judged)) for part in (sp.train, sp.test))
    Xg, yg = b.sample(int(np.bincount(sp.train.y).max()), seed=123)
    real = M.csp_lda_accuracy(sp.train.X, sp.train.y, sp.test.X, sp.test.y)
    tstr = M.csp_lda_accuracy(Xg, yg, sp.test.X, sp.test.y)
    bp = M.band_power_errors(Xg, yg, sp.test.X, sp.test.y, b.sfreq, b.ch_names)
    lat = M.lateralization_agreement(Xg, yg, sp.test.X, sp.test.y, b.sfreq, b.ch_names)
    nn = M.nn_distance_ratio(Xg, sp.train.X, sp.test.X)
    # The same against the generator's own training trials: separates how faithful the generator
    # is from how far the held-out session has drifted from the training sessions.
    bp_tr = M.band_power_errors(Xg, yg, sp.train.X, sp.train.y, b.sfreq, b.ch_names)
    Xn, yn = b.sample(args.band_per_class, seed=321)
    bp_n = M.band_power_errors(Xn, yn, sp.test.X, sp.test.y, b.sfreq, b.ch_names)
    lat_n = M.lateralization(Xn, yn, b.sfreq, b.ch_names)
    # Per subject: how many show the textbook signs (C3 < 0 < C4) in the training and held-out runs.
    subj = {}
    for name, part in (("train", sp.train), ("test", sp.test)):
        lats = [M.lateralization(part.X[part.subject == s_], part.y[part.subject == s_], b.sfreq, b.ch_names)
                for s_ in np.unique(part.subject)]
        for ch, sign in (("C3", -1), ("C4", 1)):
            if lats and ch in lats[0]:
                subj[f"mu_lat_{ch}_{name}_subjects_textbook_sign"] = f"{sum(sign * d[ch] > 0 for d in lats)}/{len(lats)}"
    lat_tr = M.lateralization(sp.train.X, sp.train.y, b.sfreq, b.ch_names)
    drift = M.band_power_errors(sp.train.X, sp.train.y, sp.test.X, sp.test.y, b.sfreq, b.ch_names)
    def worst(errs: dict) -> float:  # largest |relative error| over the band x class x channel cells
        return max(abs(v) for k, v in errs.items() if k != "mean_abs")

    # How far the held-out trials' own worst cell wanders: resampled with replacement against themselves.
    boot = np.random.default_rng(0)
    self_worst = [worst(M.band_power_errors(sp.test.X[i], sp.test.y[i], sp.test.X, sp.test.y, b.sfreq, b.ch_names))
                  for i in (boot.integers(0, len(sp.test.y), len(sp.test.y)) for _ in range(200))]

    return {"run": str(folder), "csp_real_trained": real, "csp_tstr": tstr,
            "tstr_fraction_of_real_above_chance": (tstr - 0.5) / max(real - 0.5, 1e-9),
            "band_power_mean_abs_rel_err": bp["mean_abs"],
            "band_power_max_abs_rel_err": worst(bp),
            **{f"mu_lat_{k}": v for k, v in lat.items() if k.endswith("_db") and "abs" not in k},
            "band_power_vs_train_mean_abs_rel_err": bp_tr["mean_abs"],
            "band_power_vs_train_max_abs_rel_err": worst(bp_tr),
            "band_power_train_vs_test_max_abs_rel_err": worst(drift),
            "band_power_test_resampled_max_abs_rel_err_median": float(np.median(self_worst)),
            "band_power_test_resampled_max_abs_rel_err_p90": float(np.quantile(self_worst, 0.9)),
            "judged_subjects": judged,
            "band_per_class": args.band_per_class, "band_power_mean_abs_rel_err_n": bp_n["mean_abs"],
            "band_power_max_abs_rel_err_n": worst(bp_n), **{f"mu_lat_{k}_generated_db_n": v for k, v in lat_n.items()},
            **{f"mu_lat_{k}_train_db": v for k, v in lat_tr.items()}, **subj,
            "nn_ratio": nn["nn_ratio"], "model_name": _json.loads((folder / "gan.json").read_text())["model_name"],
            **(repeated_tstr(b, cfg, args.repeats, args.per_class) if args.repeats else {})}


def repeated_tstr(bundle, cfg: dict, repeats: int, per_class: int) -> dict:
    """Train-on-synthetic accuracy on the real held-out trials, averaged over `repeats` fresh
    generated sets (per_class trials per class, seeds 1000 + i) and classifier seeds i: the
    evaluation module's CNN and CSP+LDA (6 components). One generated set and one classifier seed
    move these accuracies by several points on 150 test trials; the mean is the number to compare."""
    from trainers.evaluate import Evaluator
    from utils import metrics as M

    ev = Evaluator(cfg, "cpu", progress=False)
    r = ev.real
    out = {"tstr_cnn": [], "tstr_csp": [], "cnn_real_trained": []}
    for i in range(repeats):
        Xg, yg = bundle.sample(per_class, 1000 + i)
        out["tstr_cnn"].append(ev.fit(Xg, yg, i).accuracy(r.X_test, r.y_test))
        out["tstr_csp"].append(M.csp_lda_accuracy(Xg, yg, r.X_test, r.y_test, 6))
        out["cnn_real_trained"].append(ev.fit(r.X_pool, r.y_pool, i).accuracy(r.X_test, r.y_test))
    res = {"repeats": repeats, "generated_per_class": per_class}
    for k, v in out.items():
        res[f"{k}_mean"], res[f"{k}_std"] = float(np.mean(v)), float(np.std(v))
    return res


def diagnose(args) -> dict:
    """Class separation and covariance of generated vs real log band power (see the module docstring)."""
    from sklearn.covariance import ledoit_wolf
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from data.dataset import load_splits
    from trainers.gan import SpectralTargets, paired_draw
    from trainers.generate import gan_folder, load_generator

    folder = gan_folder(args.run)
    b = load_generator(folder)
    cfg, g = b.cfg, b.generator
    if b.representation != "sensor":
        sys.exit(f"diagnose: {folder} is a {b.representation!r} run; only sensor-space runs are supported")
    sp = load_splits(cfg, cfg["data"], seed=cfg["seed"], progress=False).pooled()  # the GAN's training trials
    std = b.standardizer
    Xtr = torch.from_numpy(std.transform(sp.train.X))
    ytr_t = torch.from_numpy(sp.train.y.astype(np.int64))
    st = SpectralTargets(Xtr, ytr_t, b.sfreq, band_classifier=False, envelope=False).eval()

    def feats(X_std: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return st.features(X_std)["logbp"].flatten(1).double().numpy()

    Xg, yg = b.sample(args.per_class, seed=7)
    Fg, Fte = (feats(torch.from_numpy(std.transform(X))) for X in (Xg, sp.test.X))
    Ftr = feats(Xtr)
    ytr, yte = sp.train.y, sp.test.y
    mu, sd = Ftr.mean(0), Ftr.std(0) + 1e-12
    Zg, Ztr, Zte = ((F - mu) / sd for F in (Fg, Ftr, Fte))

    def resid(Z, y):
        return np.concatenate([Z[y == c] - Z[y == c].mean(0) for c in (0, 1)])

    C, _ = ledoit_wolf(resid(Ztr, ytr), assume_centered=True)
    lam, V = np.linalg.eigh(C)
    quart = np.array_split(np.argsort(lam)[::-1], 4)
    out = {"run": str(folder), "features": int(Fg.shape[1]), "generated_per_class": args.per_class}
    for name, Z, y in (("generated", Zg, yg), ("train", Ztr, ytr), ("test", Zte, yte)):
        d = Z[y == 1].mean(0) - Z[y == 0].mean(0)
        w = (V.T @ d) ** 2 / lam
        out[f"mahalanobis_{name}"] = float(np.sqrt(w.sum()))
        out[f"mahalanobis2_{name}_by_quartile"] = [float(w[q].sum()) for q in quart]
        out[f"mahalanobis2_{name}_noise_only"] = float(Z.shape[1] * (1 / (y == 0).sum() + 1 / (y == 1).sum()))
    out["generated_within_class_sd_per_feature"] = float(resid(Zg, yg).std(0).mean())  # real: 1 by construction
    vg = ((resid(Zg, yg) @ V) ** 2).mean(0) / lam
    out["generated_within_class_variance_ratio_by_quartile"] = [float(vg[q].mean()) for q in quart]

    out.update(spread_along_fitted_directions(Zg, yg, Ztr, ytr, Zte, yte, resid))

    def lda(Za, ya, Zb, yb):
        return float(LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(Za, ya).score(Zb, yb))

    out.update(lda_generated_to_test=lda(Zg, yg, Zte, yte), lda_generated_to_train=lda(Zg, yg, Ztr, ytr),
               lda_train_to_test=lda(Ztr, ytr, Zte, yte))
    # The contrast term of the kept generator (before its calibration: training saw none), on fresh
    # batches drawn as in training (each noise vector as both classes, subjects of real batches).
    g.eval()
    calibration = g.calibration.clone()
    g.calibration.fill_(1.0)
    s_tr = g.subject_index(sp.train.subject) if g.config.subject_count else None
    rng = torch.Generator().manual_seed(11)
    ema_targets = SpectralTargets(Xtr, ytr_t, b.sfreq, band_classifier=False, envelope=False,
                                  ema_decay=cfg["gan"]["contrast_ema"]).train()
    ds = []
    with torch.no_grad():
        for _ in range(60):
            z, y, s = paired_draw(g, torch.randperm(len(ytr_t), generator=rng)[:cfg["batch_size"]], s_tr, rng)
            x = g(z, y, s)
            lb = st.features(x)["logbp"]
            ds.append(lb[y == 1].mean(0) - lb[y == 0].mean(0))
            contrast_ema = ema_targets.losses(x, y)["contrast"]
    g.calibration.copy_(calibration)
    d = torch.stack(ds).mean(0)
    out["contrast_logbp_fresh_batches"] = float((d - st.d_logbp).pow(2).mean() / st.d_logbp_scale)
    out["contrast_moving_average_fresh_batches"] = float(contrast_ema)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out["contrast_training_last_epoch"] = rows[-1].get("contrast_loss") if rows else None
    out.update(csp_decomposition(b, sp, args.per_class))
    # The real class difference against its sampling noise (gan.shrink_contrast's numbers): the
    # whitened band covariance is the target's, so it is reported in those units.
    shrunk = SpectralTargets(Xtr, ytr_t, b.sfreq, band_classifier=False, envelope=False,
                             subject=s_tr, subject_count=g.config.subject_count if s_tr is not None else 0,
                             shrink_contrast=True)
    out.update({f"class_difference_kept_{k}": v for k, v in shrunk.class_contrast_kept.items()})
    out.update({f"class_difference_norm2_and_noise_{k}": list(v) for k, v in shrunk.class_contrast_noise.items()})
    return out


def spread_along_fitted_directions(Zg, yg, Ztr, ytr, Zte, yte, resid) -> dict:
    """Within-class variance along directions fitted on one set and measured on another.

    Along its own eigenvectors a sample covariance understates the small variances (the directions are
    fitted to the sample), badly so for 150-300 trials in ~100 dimensions; measured on other trials
    along fixed directions a variance is unbiased. So the generated set's thin half (its smaller
    eigen-directions, fitted on many trials) and its discriminant w = S_gen^-1 d_gen are measured on the
    real trials, and the same bias is shown for the real training trials' own thin half against run 12.
    """
    def cov(Z, y):
        R = resid(Z, y)
        return R.T @ R / (len(R) - 2)

    Sg, Str, Ste = cov(Zg, yg), cov(Ztr, ytr), cov(Zte, yte)
    lam, V = np.linalg.eigh(Sg)
    thin = V[:, : len(lam) // 2]
    w = np.linalg.solve(Sg, Zg[yg == 1].mean(0) - Zg[yg == 0].mean(0))[:, None]   # one direction, as a column
    w /= np.linalg.norm(w)
    lam_tr, V_tr = np.linalg.eigh(Str)
    thin_tr = V_tr[:, : len(lam_tr) // 2]

    def var(S, U):  # summed variance along the columns of U
        return float(np.trace(U.T @ S @ U))

    return {"spread_generated_over_train_generated_thin_half": var(Sg, thin) / var(Str, thin),
            "spread_generated_over_test_generated_thin_half": var(Sg, thin) / var(Ste, thin),
            "spread_generated_over_train_generated_discriminant": var(Sg, w) / var(Str, w),
            "spread_generated_over_test_generated_discriminant": var(Sg, w) / var(Ste, w),
            "spread_train_in_sample_over_test_train_thin_half": var(Str, thin_tr) / var(Ste, thin_tr),
            "spread_generated_over_test_train_thin_half": var(Sg, thin_tr) / var(Ste, thin_tr)}


def csp_decomposition(bundle, sp, per_class: int, seeds=(1000, 1001, 1002)) -> dict:
    """CSP+LDA (as utils.metrics.csp_lda_accuracy) with filters and LDA fitted on different sets, and
    the whitened class-covariance difference of generated, training and held-out trials."""
    from mne.decoding import CSP
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    Xr, yr, Xt, yt = sp.train.X.astype(np.float64), sp.train.y, sp.test.X.astype(np.float64), sp.test.y
    Cr, Ct = trial_covariances(Xr), trial_covariances(Xt)
    lam, V = np.linalg.eigh(Cr.mean(0))
    W = (V / np.sqrt(lam)) @ V.T

    def wdiff(C, y):  # C: per-trial covariances
        return W @ (C[y == 1].mean(0) - C[y == 0].mean(0)) @ W

    def cos(a, b):
        return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))

    def acc(csp, X, y):
        return LinearDiscriminantAnalysis().fit(csp.transform(X), y).score(csp.transform(Xt), yt)

    n_comp = min(6, Xr.shape[1])
    csp_r = CSP(n_comp, reg="ledoit_wolf", log=True).fit(Xr, yr)
    Dr, Dt = wdiff(Cr, yr), wdiff(Ct, yt)
    rows = {k: [] for k in ("csp_generated_filters_generated_lda", "csp_real_filters_generated_lda",
                            "csp_generated_filters_real_lda", "wcov_diff_norm_generated",
                            "wcov_diff_cos_generated_train", "wcov_diff_cos_generated_test")}
    for seed in seeds:
        Xg, yg = bundle.sample(per_class, seed)
        Xg = Xg.astype(np.float64)
        csp_g = CSP(n_comp, reg="ledoit_wolf", log=True).fit(Xg, yg)
        Dg = wdiff(trial_covariances(Xg), yg)
        for k, v in zip(rows, (acc(csp_g, Xg, yg), acc(csp_r, Xg, yg), acc(csp_g, Xr, yr), float(np.linalg.norm(Dg)),
                               cos(Dg, Dr), cos(Dg, Dt))):
            rows[k].append(v)
    return {"csp_real_filters_real_lda": acc(csp_r, Xr, yr), **{k: float(np.mean(v)) for k, v in rows.items()},
            "wcov_diff_norm_train": float(np.linalg.norm(Dr)), "wcov_diff_norm_test": float(np.linalg.norm(Dt)),
            "wcov_diff_cos_train_test": cos(Dr, Dt),
            # Two random halves of the training trials: how much of their difference is sampling noise.
            "wcov_diff_cos_train_halves": cos(*(wdiff(Cr[h], yr[h]) for h in np.array_split(
                np.random.default_rng(0).permutation(len(yr)), 2)))}


def scored_run(args):
    """(run folder, its generator bundle, an Evaluator on its target data) for the modes that score one run."""
    from trainers.evaluate import Evaluator
    from trainers.generate import gan_folder, load_generator

    folder = gan_folder(args.run)
    b = load_generator(folder)
    return folder, b, Evaluator(b.cfg, "cpu", progress=False)


def cnn_transfer(args) -> dict:
    """Train-on-synthetic CNN taken apart (see the module docstring)."""
    from sklearn.metrics import roc_auc_score

    from utils import metrics as M

    folder, b, ev = scored_run(args)
    r = ev.real
    seeds = range(args.repeats or 3)

    def margin(fc, X):  # right-minus-left logit per trial
        out = fc.logits(X)
        return out[:, 1] - out[:, 0]

    out = {"run": str(folder), "real_pool_trials": len(r.y_pool), "test_trials": len(r.y_test)}
    n_real = int(np.bincount(r.y_pool).max())
    for n in dict.fromkeys((n_real, args.per_class)):
        rows = []
        for i in seeds:
            Xg, yg = b.sample(n, 1000 + i)
            Xh, yh = b.sample(200, 5000 + i)
            fc = ev.fit(Xg, yg, i)
            rows.append((fc.accuracy(Xh, yh), fc.accuracy(r.X_pool, r.y_pool), roc_auc_score(r.y_pool, margin(fc, r.X_pool)),
                         fc.accuracy(r.X_test, r.y_test), roc_auc_score(r.y_test, margin(fc, r.X_test))))
            rows[-1] += (fc.accuracy(M.phase_randomize(Xh, 9000 + i), yh),
                         fc.accuracy(equalise_class_spectra(Xh, yh, r.sfreq), yh))
        for k, v in zip(("acc_generated_heldout", "acc_real_pool", "auc_real_pool", "acc_test", "auc_test",
                         "acc_generated_heldout_phase_randomised", "acc_generated_heldout_class_spectra_equalised"),
                        np.mean(rows, 0)):
            out[f"generated_trained_{n}_per_class_{k}"] = float(v)
    out.update(decoder_families(r, b, n_real, seeds))
    surrogates = pool_surrogates(r.sfreq)
    sec = int(round(r.sfreq))
    segments = [(a, a + 1) for a in range(r.X_test.shape[-1] // sec)]
    for name, make in surrogates.items():
        accs, probes = [], {}
        for i in seeds:
            fc = ev.fit(make(r.X_pool, i), r.y_pool, i)
            accs.append(fc.accuracy(r.X_test, r.y_test))
            if name != "real":
                continue
            tests = {"generated": b.sample(args.per_class, 7000 + i),
                     "test_phase_randomised": (M.phase_randomize(r.X_test, 9000 + i), r.y_test),
                     "test_class_spectra_equalised": (equalise_class_spectra(r.X_test, r.y_test, r.sfreq), r.y_test),
                     **{f"test_phase_randomised_{a}-{e}s": (phase_randomize_segment(r.X_test, a * sec, e * sec, 9000 + i),
                                                            r.y_test) for a, e in segments}}
            for k, (X, y) in tests.items():
                probes.setdefault(k, []).append(fc.accuracy(X, y))
        out[f"{name}_trained_acc_test"] = float(np.mean(accs))
        out.update({f"real_trained_acc_{k}": float(np.mean(v)) for k, v in probes.items()})
    return out


def draw_counts(args) -> dict:
    """Linear decoders trained on N generated trials per class, N in --counts (see the module docstring)."""
    from config.schema import apply_overrides, validate
    from trainers.evaluate import RealData
    from trainers.generate import gan_folder, load_generator
    from utils import metrics as M

    folder = gan_folder(args.run)
    b = load_generator(folder)
    cfg = validate(apply_overrides(b.cfg, args.set))
    r = RealData(cfg, progress=False)
    judged = cfg["evaluation"]["subjects"]
    if judged is not None:
        b.only_subjects(judged)
    decoders = {"csp_lda": lambda X, y: M.csp_lda_accuracy(X, y, r.X_test, r.y_test),
                "band_lda": lambda X, y: M.band_lda_accuracy(X, y, r.X_test, r.y_test, r.sfreq)}
    out = {"run": str(folder), "judged_subjects": judged, "test_trials": len(r.y_test),
           **{f"{k}_real_trained": f(r.X_pool, r.y_pool) for k, f in decoders.items()}}
    for n in args.counts:
        accs = {k: [] for k in decoders}
        for i in range(args.repeats or 3):
            X, y = b.sample(n, 4000 + i)
            for k, f in decoders.items():
                accs[k].append(f(X, y))
        for k, v in accs.items():
            out.update({f"{k}_{n}_per_class": float(np.mean(v)), f"{k}_{n}_per_class_min": float(np.min(v)),
                        f"{k}_{n}_per_class_max": float(np.max(v))})
    return out


def pool_surrogates(sfreq: float) -> dict:
    """name -> make(X, seed): the real pool as it is, and surrogates of it (see `cnn` in the docstring)."""
    from utils import metrics as M

    rng = np.random.default_rng(0)

    def shifted(X, m):
        return np.stack([np.roll(x, rng.integers(-m, m + 1), axis=-1) for x in X])

    q = int(round(0.25 * sfreq))
    return {"real": lambda X, i: X, "phase_randomised": M.phase_randomize,
            "shifted_0.25s": lambda X, i: shifted(X, q), "shifted_1s": lambda X, i: shifted(X, 4 * q),
            **{f"stft_phase_randomised_{w}s": (lambda X, i, w=w: stft_phase_randomize(X, i, sfreq, w))
               for w in (0.25, 0.5, 1.0)}}


def _cnn_bar(args, ev):
    """(CNN seeds, the evaluation's own train-on-real CNN correctness per held-out trial, summary dict)."""
    from trainers.evaluate import TARGET_SHARE, cached_references

    fixed = np.asarray(cached_references(ev)["real"]["decoding"]["correct"]["cnn"], float)
    seeds = range(args.repeats or 3)
    return seeds, fixed, {"test_trials": len(ev.real.y_test), "cnn_seeds": len(seeds),
                          "evaluation_cnn_acc_test": float(fixed.mean()),
                          "bar": 0.5 + TARGET_SHARE * (float(fixed.mean()) - 0.5)}


def _score_against_bar(ev, name: str, draw, seeds, fixed) -> dict:
    """The evaluation's CNN trained on draw(i) for each seed i, scored on the held-out trials: mean, min, max
    and the mean's difference to the bar with the evaluation's paired 95% bootstrap interval."""
    from trainers.evaluate import TARGET_SHARE
    from utils import metrics as M

    r = ev.real
    correct = []
    for i in seeds:
        X, y = draw(i)
        correct.append((ev.fit(X, y, i).predict(r.X_test) == r.y_test).astype(float))
    u = M.margin_shortfall(np.mean(correct, 0), fixed, TARGET_SHARE, groups=r.subject_test, seed=0)
    return {f"{name}_trained_acc_test": float(np.mean(correct)),
            f"{name}_trained_acc_test_min": float(min(c.mean() for c in correct)),
            f"{name}_trained_acc_test_max": float(max(c.mean() for c in correct)),
            f"{name}_minus_bar": u["difference"], f"{name}_minus_bar_lo": u["lo"], f"{name}_minus_bar_hi": u["hi"]}


def ceiling(args) -> dict:
    """How close to the evaluation's CNN bar the real pool, its surrogates and the GAN get, with intervals."""
    folder, b, ev = scored_run(args)
    r = ev.real
    seeds, fixed, head = _cnn_bar(args, ev)
    out = {"run": str(folder), **head}
    n_real = int(np.bincount(r.y_pool).max())
    sets = {name: (lambda i, make=make: (make(r.X_pool, i), r.y_pool))
            for name, make in pool_surrogates(r.sfreq).items() if not name.startswith("shifted")}
    sets["generated"] = lambda i: b.sample(n_real, 1000 + i)  # as many per class as the pool holds
    for name, draw in sets.items():
        out.update(_score_against_bar(ev, name, draw, seeds, fixed))
    return out


def condense(args) -> dict:
    """Gradient matching on free trials: how far the generator's gradient-matching objective can take a CNN."""
    from tqdm import tqdm

    from trainers.gradient_matching import GradientMatching
    from utils import metrics as M

    folder, b, ev = scored_run(args)
    r = ev.real
    seeds, fixed, head = _cnn_bar(args, ev)
    std = b.standardizer
    n_real = int(np.bincount(r.y_pool).max())
    X0, y0 = b.sample(n_real, 1000)  # the start: generated trials, as many per class as the pool holds
    out = {"run": str(folder), **head, "iterations": args.iters, "trials": len(y0)}
    out.update(_score_against_bar(ev, "generated", lambda i: (X0, y0), seeds, fixed))
    Xr = torch.from_numpy(std.transform(r.X_pool)).float()
    yr, yS = torch.from_numpy(r.y_pool).long(), torch.from_numpy(y0).long()
    out.update(_matching_floor(b, r, Xr, yr, ev.s["architecture"], reset=20, steps=100))
    for reset in args.resets if args.iters > 0 else ():  # --iters 0: the distances only
        torch.manual_seed(0)
        S = torch.from_numpy(std.transform(X0)).float().requires_grad_(True)
        opt = torch.optim.Adam([S], lr=args.lr)
        matcher = GradientMatching(Xr, yr, r.sfreq, r.ch_names, ev.s["architecture"], seed=0, reset_every=reset)
        for _ in tqdm(range(args.iters), desc=f"condense reset {reset}", disable=args.quiet):
            dist, _ = matcher.loss(S, yS)
            opt.zero_grad(set_to_none=True)
            dist.backward()
            opt.step()
        X = std.inverse(S.detach().numpy())
        name = f"condensed_reset{reset}"
        out.update(_score_against_bar(ev, name, lambda i, X=X: (X, y0), seeds, fixed))
        out[f"{name}_nn_ratio"] = M.nn_distance_ratio(X, r.X_pool, r.X_b)["nn_ratio"]
    return out


def _matching_floor(b, r, Xr, yr, architecture: str, reset: int, steps: int) -> dict:
    """The gradient-matching distance (to the real pool's gradient) along `steps` probe steps restarted every
    `reset`, for sets as large as the held-out run: the held-out trials (an independent real sample: the level
    sampling noise alone leaves), fresh generated sets and random subsets of the pool itself; and for generated
    sets 2 and 8 times as large (what is left as the sets grow is the generator's own bias, not noise)."""
    from trainers.gradient_matching import GradientMatching

    std, n = b.standardizer, len(r.y_test)
    t = lambda X: torch.from_numpy(std.transform(X)).float()  # noqa: E731
    matcher = GradientMatching(Xr, yr, r.sfreq, r.ch_names, architecture, seed=0, reset_every=reset)
    rng = np.random.default_rng(0)
    sizes = (n, 2 * n, 8 * n)
    rows = []
    for i in range(steps):
        sub = rng.choice(len(yr), n, replace=False)
        sets = [(r.X_test, r.y_test), (r.X_pool[sub], r.y_pool[sub])]
        sets += [b.sample(-(-k // 2), 2000 + 10 * i + j) for j, k in enumerate(sizes)]
        rows.append([matcher.distance(t(X), torch.from_numpy(np.asarray(y)).long(), create_graph=False).item()
                     for X, y in sets])
        matcher.step_probe()
    m = np.mean(rows, 0)
    out = {"match_distance_heldout": float(m[0]), "match_distance_pool_subset": float(m[1]),
           "match_distance_set_size": n}
    out.update({f"match_distance_generated_{k}": float(v) for k, v in zip(sizes, m[2:])})
    return out


def decoder_families(r, b, per_class: int, seeds) -> dict:
    """Which kind of class structure of the generated trials carries over to the held-out run: a shrinkage
    LDA on log band power per channel (theta, mu, beta, gamma; the power a lateralisation decoder reads)
    and a Riemannian tangent-space logistic regression on the trial covariance (the channel correlations
    as well; bench_classifier.py's pipeline). Each is trained on the real pool (scored on the held-out run)
    and on generated trials, as many per class as the pool holds (scored on held-out generated trials, on
    the pool and on the held-out run). A generated set whose classes stand far further apart than real
    ones in one family but carry over worse than the pool does has class structure of its own there."""
    from bench_classifier import riemann_pipeline
    from utils import metrics as M

    families = {"band_power_lda": (lambda X: M.log_band_power_features(X, r.sfreq), M.shrinkage_lda),
                "tangent_space_lr": (lambda X: X.astype(np.float64), riemann_pipeline)}
    out = {}
    # The generated sets (and their seeds) of cnn_transfer's per-pool-size CNN, drawn once for both families.
    sets = [(b.sample(per_class, 1000 + i), b.sample(200, 5000 + i)) for i in seeds]
    with M.blas_single_thread():  # 21x21 covariances and eigendecompositions (see utils/metrics.py)
        for name, (feats, make) in families.items():
            test, pool = feats(r.X_test), feats(r.X_pool)
            out[f"{name}_real_trained_acc_test"] = float(make().fit(pool, r.y_pool).score(test, r.y_test))
            rows = []
            for (Xg, yg), (Xh, yh) in sets:
                m = make().fit(feats(Xg), yg)
                rows.append((m.score(feats(Xh), yh), m.score(pool, r.y_pool), m.score(test, r.y_test)))
            for k, v in zip(("acc_generated_heldout", "acc_real_pool", "acc_test"), np.mean(rows, 0)):
                out[f"{name}_generated_trained_{k}"] = float(v)
    return out


def transforms(args) -> dict:
    """Offline edits of generated trials, scored as train-on-synthetic (see the module docstring)."""
    from bench_classifier import riemann_pipeline
    from utils import metrics as M

    folder, b, ev = scored_run(args)
    r = ev.real
    draw = b.sample_subjects  # scalp trials with their subjects
    Xc, yc, sc = draw(500, 4242)
    colour = CrossSpectralColouring(r.X_pool, r.y_pool, Xc, yc, r.sfreq)
    envelope = SubjectEnvelope(r.X_pool, r.subject_pool, r.sfreq)
    align = SubjectCovarianceAlignment(r.X_pool, r.subject_pool, Xc, sc)
    edits = {"raw": lambda X, y, s: X, "cross_spectra_coloured": lambda X, y, s: colour(X, y),
             "subject_envelope_imposed": lambda X, y, s: envelope(X, s),
             "subject_covariance_aligned": lambda X, y, s: align(X, s)}
    n_real = int(np.bincount(r.y_pool).max())
    feats = lambda X: M.log_band_power_features(X, r.sfreq)  # noqa: E731
    test64, test_feats = r.X_test.astype(np.float64), feats(r.X_test)
    out = {"run": str(folder), "generated_per_class": n_real,
           "real_trained_cnn_acc_test": float(np.mean([ev.fit(r.X_pool, r.y_pool, i).accuracy(r.X_test, r.y_test)
                                                       for i in range(args.repeats or 3)])),
           "real_trained_csp_lda_acc_test": M.csp_lda_accuracy(r.X_pool, r.y_pool, r.X_test, r.y_test)}
    rows: dict[str, list] = {}
    for i in range(args.repeats or 3):
        (Xg, yg, sg), (Xh, yh, sh) = draw(n_real, 1000 + i), draw(200, 5000 + i)
        for name, edit in edits.items():
            A, H = edit(Xg, yg, sg), edit(Xh, yh, sh)
            fc = ev.fit(A, yg, i)
            with M.blas_single_thread():
                band = M.shrinkage_lda().fit(feats(A), yg).score(test_feats, r.y_test)
                ts = riemann_pipeline().fit(A.astype(np.float64), yg).score(test64, r.y_test)
            rows.setdefault(name, []).append((fc.accuracy(r.X_test, r.y_test), fc.accuracy(H, yh),
                                              M.csp_lda_accuracy(A, yg, r.X_test, r.y_test), band, ts))
    for name, v in rows.items():
        for k, x in zip(("cnn_acc_test", "cnn_acc_generated_heldout", "csp_lda_acc_test", "band_power_lda_acc_test",
                         "tangent_space_lr_acc_test"), np.mean(v, 0)):
            out[f"{name}_{k}"] = float(x)
    Xs, ys, ss = draw(300, 6000)
    out.update(envelope.report(Xs, ss, r.X_test, r.subject_test))
    out.update(subject_class_structure(b, r, Xs, ys, ss))
    Xa = align(Xs, ss)
    for u in b.generator.config.subjects:
        g, te = ss == u, r.subject_test == u
        out[f"subject_{u}_csp_lda_generated_aligned_trained"] = M.csp_lda_accuracy(Xa[g], ys[g], r.X_test[te], r.y_test[te])
    out.update({f"frechet_{name}": float(np.mean([M.frechet_distance(ev.features(edit(*draw(len(r.y_a) // 2, 8000 + i))),
                                                                   ev.features(r.X_b)) for i in range(4)]))
                for name, edit in edits.items() if name != "cross_spectra_coloured"})
    return out


def subject_class_structure(b, r, Xg, yg, sg) -> dict:
    """Per subject: the part of its own class difference the per-subject targets keep (gan.subject_shrinkage,
    as the run was configured), the cosine of its whitened class-covariance difference (all bands; the
    generator's whitening) between the real pool, the held-out run and the generated trials (Xg), and
    CSP+LDA trained on its real or generated trials, tested on its held-out trials."""
    from trainers.gan import SpectralTargets
    from utils import metrics as M

    std, cfg = b.standardizer, b.cfg

    def units(X):
        return torch.from_numpy(std.transform(X))

    s_pool = b.generator.subject_index(r.subject_pool)
    t = SpectralTargets(units(r.X_pool), torch.from_numpy(r.y_pool), r.sfreq, band_classifier=False, envelope=False,
                        subject=s_pool, subject_count=b.generator.config.subject_count,
                        subject_shrinkage=cfg["gan"].get("subject_shrinkage", "global"))  # runs before the key: global

    def d_wcov(X, y):
        w = t._whitened(t.features(units(X))["cov"]).double()
        return (w[y == 1].mean(0) - w[y == 0].mean(0)).flatten()

    def cos(p, q):
        return float(p @ q / (p.norm() * q.norm()))

    out = {}
    for k, u in enumerate(b.generator.config.subjects):
        p, te, g = r.subject_pool == u, r.subject_test == u, sg == u
        dp, dt, dg = d_wcov(r.X_pool[p], r.y_pool[p]), d_wcov(r.X_test[te], r.y_test[te]), d_wcov(Xg[g], yg[g])
        kept = t.subject_contrast_kept  # one per subject with both classes in the pool
        out.update({f"subject_{u}_contrast_kept": kept[k] if len(kept) == len(b.generator.config.subjects) else None,
                    f"subject_{u}_class_cov_cos_pool_test": cos(dp, dt),
                    f"subject_{u}_class_cov_cos_generated_pool": cos(dg, dp),
                    f"subject_{u}_class_cov_cos_generated_test": cos(dg, dt),
                    f"subject_{u}_csp_lda_real_trained": M.csp_lda_accuracy(r.X_pool[p], r.y_pool[p], r.X_test[te],
                                                                            r.y_test[te]),
                    f"subject_{u}_csp_lda_generated_trained": M.csp_lda_accuracy(Xg[g], yg[g], r.X_test[te],
                                                                                 r.y_test[te])})
    return out


class CrossSpectralColouring:
    """Per class and rfft bin (4-40 Hz), the matrix M = S_real^1/2 S_gen^-1/2 (Hermitian roots of the class-mean
    cross-spectral matrices, `smooth_hz`-averaged) that makes the generated class-mean cross-spectra the real
    pool's: gan.calibrate=class extended from each channel's power to the channels' coherences. Fitted once
    on one generated set, applied to others."""

    def __init__(self, X_real, y_real, X_gen, y_gen, sfreq: float, smooth_hz: float = 2.0):
        from scipy.ndimage import uniform_filter1d

        self.n_times = X_real.shape[-1]
        k = max(1, int(round(smooth_hz * self.n_times / sfreq))) | 1
        freqs = np.fft.rfftfreq(self.n_times, 1 / sfreq)
        band = (freqs >= 4) & (freqs < 40)

        def csd(X, y):  # (2, F, C, C)
            S = np.fft.rfft(X.astype(np.float64), axis=-1)[..., band]
            R = np.stack([np.einsum("ncf,ndf->fcd", S[y == c], S[y == c].conj()) / (y == c).sum() for c in (0, 1)])
            return uniform_filter1d(R.real, k, axis=1, mode="nearest") \
                + 1j * uniform_filter1d(R.imag, k, axis=1, mode="nearest")

        def power(A, p):
            w, V = np.linalg.eigh(A)
            w = np.maximum(w, w.max(-1, keepdims=True) * 1e-6)
            return (V * w[..., None, :] ** p) @ V.conj().swapaxes(-1, -2)

        C = X_real.shape[1]
        self.M = np.tile(np.eye(C, dtype=complex), (2, len(freqs), 1, 1))
        self.M[:, band] = power(csd(X_real, y_real), 0.5) @ power(csd(X_gen, y_gen), -0.5)

    def __call__(self, X, y):
        S = np.einsum("nfcd,ndf->ncf", self.M[y], np.fft.rfft(X.astype(np.float64), axis=-1))
        return np.fft.irfft(S, n=self.n_times, axis=-1).astype(X.dtype)


class SubjectCovarianceAlignment:
    """Per subject, the map A_u = C_real^1/2 C_gen^-1/2 (symmetric roots of the subject's class-pooled mean
    trial covariance, real pool and one generated set) that makes its generated mean spatial covariance the
    real one while keeping the generator's class difference relative to it (Riemannian re-centring onto the
    real subject mean). Fitted once, applied to other generated sets."""

    def __init__(self, X_real, s_real, X_gen, s_gen):
        def root(C, p):
            w, V = np.linalg.eigh(C)
            return (V * w ** p) @ V.T

        from utils import metrics as M

        with M.blas_single_thread():
            self.maps = {u: root(self.mean_cov(X_real[s_real == u]), 0.5) @ root(self.mean_cov(X_gen[s_gen == u]), -0.5)
                         for u in np.unique(s_real)}

    @staticmethod
    def mean_cov(X):
        X = X.astype(np.float64)
        return np.einsum("nct,ndt->cd", X, X) / (X.shape[0] * X.shape[-1])

    def __call__(self, X, subject):
        out = X.astype(np.float64).copy()
        for u in np.unique(subject):
            out[subject == u] = np.einsum("cd,ndt->nct", self.maps[u], out[subject == u])
        return out.astype(X.dtype)


class SubjectEnvelope:
    """Each subject's class-averaged time course of theta, mu and beta power per channel (log power in 0.5 s
    windows minus its mean over the trial), from the real pool; `__call__` rescales each band of generated
    trials, per subject, so their time course becomes the real one (gains interpolated between window centres)."""

    BANDS = ((4, 8), (8, 13), (13, 30))

    def __init__(self, X_real, subject, sfreq: float, window_s: float = 0.5):
        self.sfreq, self.win = sfreq, int(round(window_s * sfreq))
        self.real = {u: self.shapes(X_real[subject == u]) for u in np.unique(subject)}

    def bands(self, X):
        from scipy.signal import butter, sosfiltfilt

        return [sosfiltfilt(butter(4, bd, btype="band", fs=self.sfreq, output="sos"), X.astype(np.float64), axis=-1)
                for bd in self.BANDS]

    def shapes(self, X=None, xb=None):  # (bands, C, windows): mean over trials of log power, minus its mean
        xb = self.bands(X) if xb is None else xb
        n = xb[0].shape[-1] // self.win
        logp = np.stack([np.log((x[..., :n * self.win] ** 2).reshape(*x.shape[:-1], n, self.win).mean(-1)).mean(0)
                         for x in xb])
        return logp - logp.mean(-1, keepdims=True)

    def __call__(self, X, subject):
        xb = self.bands(X)
        out = X.astype(np.float64).copy()
        n = X.shape[-1] // self.win
        centres = (np.arange(n) + 0.5) * self.win
        for u in np.unique(subject):
            sel = subject == u
            gain = np.exp((self.real[u] - self.shapes(xb=[x[sel] for x in xb])) / 2)
            for k, x in enumerate(xb):
                g = np.stack([np.interp(np.arange(X.shape[-1]), centres, gc) for gc in gain[k]])
                out[sel] += (g - 1) * x[sel]
        return out.astype(X.dtype)

    def report(self, X_gen, subject_gen, X_test, subject_test) -> dict:
        """Per subject: how far the real mu time course swings (mean |shape| over channels and windows), its
        correlation with the generated one, and (averaged over channels) with the held-out run's."""
        out = {}
        for u, real in self.real.items():
            gen = self.shapes(X_gen[subject_gen == u])[1]
            test = self.shapes(X_test[subject_test == u])[1]
            out[f"subject_{u}_mu_time_course_corr_pool_test"] = float(np.corrcoef(real[1].mean(0), test.mean(0))[0, 1])
            out[f"subject_{u}_mu_time_course_abs_real"] = float(np.abs(real[1]).mean())
            out[f"subject_{u}_mu_time_course_abs_generated"] = float(np.abs(gen).mean())
            out[f"subject_{u}_mu_time_course_corr_generated_real"] = float(np.corrcoef(gen.ravel(), real[1].ravel())[0, 1])
        return out


def stft_phase_randomize(X: np.ndarray, seed: int, sfreq: float, window_s: float) -> np.ndarray:
    """Short-time phase-randomised copies: random phases per trial, STFT frame and bin (shared by the
    channels), so each trial's cross-spectrum in every window_s frame is kept (its power time course
    included) while the waveform within a frame is not. Rescaled per trial and channel to the original
    power, which overlap-adding frames of unrelated phase lowers."""
    from scipy.signal import istft, stft

    n = int(round(window_s * sfreq))
    rng = np.random.default_rng(seed)
    _, _, Z = stft(X.astype(np.float64), fs=sfreq, nperseg=n, noverlap=n // 2, axis=-1)
    Z = Z * np.exp(1j * rng.uniform(0, 2 * np.pi, size=(Z.shape[0], 1) + Z.shape[2:]))
    _, Y = istft(Z, fs=sfreq, nperseg=n, noverlap=n // 2, time_axis=-1, freq_axis=-2)
    Y = Y[..., : X.shape[-1]]
    Y *= np.sqrt((X.astype(np.float64) ** 2).mean(-1, keepdims=True) / ((Y ** 2).mean(-1, keepdims=True) + 1e-30))
    return Y.astype(X.dtype)


def equalise_class_spectra(X: np.ndarray, y: np.ndarray, sfreq: float, smooth_hz: float = 2.0) -> np.ndarray:
    """Copies whose class-mean power spectrum per channel is the class average: each class's rfft bins
    are scaled by sqrt(pooled / class-mean power), smoothed over `smooth_hz`, as gan.calibrate does.
    Per-channel band power no longer tells the classes apart (up to the smoothing); what a decoder still
    reads is elsewhere (channel correlations, time structure, trial-to-trial shape). Uses the labels:
    a probe of what a classifier reads, not a surrogate to train on."""
    from scipy.ndimage import uniform_filter1d

    S = np.fft.rfft(X.astype(np.float64), axis=-1)
    P = np.abs(S) ** 2
    k = max(1, int(round(smooth_hz * X.shape[-1] / sfreq))) | 1
    Pc = uniform_filter1d(np.stack([P[y == c].mean(0) for c in (0, 1)]), k, axis=-1, mode="nearest")
    gain = np.sqrt(Pc.mean(0) / np.maximum(Pc, 1e-300))
    return np.fft.irfft(S * gain[y], n=X.shape[-1], axis=-1).astype(X.dtype)


def phase_randomize_segment(X: np.ndarray, start: int, stop: int, seed: int) -> np.ndarray:
    """Copies with samples [start, stop) phase-randomised (utils.metrics.phase_randomize) and the rest kept:
    the segment's cross-spectrum stays, so the trial's coarse power time course does too."""
    from utils import metrics as M

    Y = X.copy()
    Y[..., start:stop] = M.phase_randomize(X[..., start:stop], seed)
    return Y


def trial_covariances(X: np.ndarray) -> np.ndarray:
    """(n, C, T) -> (n, C, C) per-trial covariance (mean removed per channel)."""
    Xc = X - X.mean(-1, keepdims=True)
    return np.einsum("nct,ndt->ncd", Xc, Xc) / X.shape[-1]


def print_table(res: dict, width: int) -> None:
    for k, v in res.items():
        v = [round(x, 3) for x in v] if isinstance(v, list) and all(isinstance(x, float) for x in v) else v
        print(f"{k:{width}s} {v:.4g}" if isinstance(v, float) else f"{k:{width}s} {v}")


RUN_MODES = ("quality", "diagnose", "cnn", "transforms", "ceiling", "condense", "counts")  # the modes that score one finished GAN run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("speed", "transfer") + RUN_MODES)
    p.add_argument("run", nargs="?", help="quality, diagnose, cnn, transforms, ceiling, condense, counts: GAN run folder")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--subjects", type=int, default=10,
                   help="speed: training subjects of the random trials (the default data has 10; < 2: none)")
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "checkpoints" / "bench_transfer"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="speed, transfer: config overrides; counts: overrides of the run's own config")
    p.add_argument("--source-set", action="append", default=[], metavar="KEY=VALUE",
                   help="transfer: overrides for the pretraining (source) config only "
                        "(default pretrain_data.task=execution)")
    p.add_argument("--reuse-pretrain", action="store_true",
                   help="transfer: reuse OUT/pretrain when it holds a finished run")
    p.add_argument("--skip", action="append", default=[], choices=("pretrained", "scratch"),
                   help="transfer: leave out a branch")
    p.add_argument("--results", help="transfer: JSON file name under bench/results (default gan_transfer.json)")
    p.add_argument("--target-per-class", type=int, default=0,
                   help="transfer: train on only K random target training trials per class (0: all)")
    p.add_argument("--per-class-transfer", type=int, default=100,
                   help="transfer: generated trials per class at each check (at least the training count)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--repeats", type=int, default=0,
                   help="quality: also average CNN and CSP train-on-synthetic over N generated sets and seeds")
    p.add_argument("--per-class", type=int, default=None,
                   help="quality --repeats: generated trials per class (150); diagnose: (300); cnn: (1000)")
    p.add_argument("--iters", type=int, default=400, help="condense: gradient-matching steps on the free trials")
    p.add_argument("--resets", type=lambda v: [int(x) for x in v.split(",")], default=[3, 10, 20, 100],
                   help="condense: probe restart periods to try, comma-separated (gan.grad_match_reset)")
    p.add_argument("--lr", type=float, default=0.01, help="condense: Adam rate on the trials (standardized units)")
    p.add_argument("--counts", type=lambda v: [int(x) for x in v.split(",")], default=[75, 150, 300, 1000, 3000],
                   help="counts: generated trials per class to train the linear decoders on, comma-separated")
    p.add_argument("--band-per-class", type=int, default=1000,
                   help="quality: generated trials per class for the *_n band-power and lateralisation numbers")
    args = p.parse_args(argv)
    if args.what in RUN_MODES and not args.run:
        p.error(f"{args.what} needs a GAN run folder")
    torch.set_num_threads(args.threads)
    from utils.runtime import tune_allocator

    print(f"glibc allocator tuned as in training: {tune_allocator()}")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")  # CSP eigendecompositions (see utils/metrics.py)
    except ImportError:
        pass
    print(f"torch threads: {torch.get_num_threads()}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.what == "speed":
        res = speed(args)
        print(f"{'metric':36s} value")
        print_table(res, 36)
        path = RESULTS / "gan.json"
    elif args.what in RUN_MODES:
        import mne

        mne.set_log_level("ERROR")
        args.per_class = args.per_class or {"diagnose": 300, "quality": 150, "cnn": 1000, "transforms": 0,
                                            "ceiling": 0, "condense": 0, "counts": 0}[args.what]
        res = {"diagnose": diagnose, "quality": quality, "cnn": cnn_transfer, "transforms": transforms,
               "ceiling": ceiling, "condense": condense, "counts": draw_counts}[args.what](args)
        print_table(res, {"diagnose": 52, "quality": 40, "cnn": 56, "transforms": 52, "ceiling": 44,
                          "condense": 44, "counts": 36}[args.what])
        path = RESULTS / f"gan_{args.what}.json"
    else:
        if not any(s.startswith("data_path=") for s in args.set):
            args.set.append(f"data_path={ROOT.parent / 'shared' / 'data' / 'eegmmidb'}")
        res = transfer(args)
        print(f"source {res['source_overrides']} ({res['source_train_trials']} training trials), "
              f"target {res['target_train_trials']} training trials")
        print(f"real-trained CSP+LDA accuracy on the held-out run: {res['real_trained_csp']:.3f}; "
              f"Frechet real floor {res['frechet_floor']:.0f}")
        print("generators calibrated on the target training trials at each check (pre = pretrained, scr = scratch)")
        cols = (("TSTR", "tstr_csp", 5, 3), ("band err", "band_error", 8, 3), ("vs train", "band_error_vs_train", 8, 3),
                ("Frechet", "frechet", 7, 0), ("moment", "moment_loss", 6, 3))
        print(f"{'epoch':>5s} {'G steps':>7s} | " + " | ".join(f"{h + ' pre':>{w + 4}s} {h + ' scr':>{w + 4}s}"
                                                        for h, _, w, _ in cols))
        curves = {k: {q["epoch"]: q for q in res[k]["curve"]} for k in ("pretrained", "scratch") if k in res}
        for epoch in sorted(set().union(*curves.values())):
            a, b = (curves.get(k, {}).get(epoch, {}) for k in ("pretrained", "scratch"))
            steps = (a or b)["generator_steps"]
            print(f"{epoch:5d} {steps:7d} | " + " | ".join(
                f"{a.get(k) or float('nan'):{w + 4}.{d}f} {b.get(k) or float('nan'):{w + 4}.{d}f}" for _, k, w, d in cols))
        path = RESULTS / (args.results or "gan_transfer.json")
        plot_transfer(res, path.with_suffix(".png"))
        print(f"wrote {path.with_suffix('.png')}")
    write_results(res, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
