"""Quality against sampling cost: FID (and KID, with its subset std) against the network evaluations per image (NFE),
one line with markers per sampler, on a log NFE axis, from the "samplers" of an eval_results.json.

    hf-ddpm evaluate PIPELINE --sweep ddpm:1000,100,50 ddim:10,20,50 dpmsolver++:10,20,50 --output sweep/
    hf-ddpm plot steps-vs-fid sweep/            # -> sweep/steps_vs_fid.png

The sweep samples every (sampler, steps) pair from the same seed and scores it against the same reference
statistics, so the points are comparable; the figure refuses results whose sample counts, seeds or feature
extractors differ. NFE is what evaluation counted on the UNet (one call per step for every sampler in
`hf_ddpm.samplers`). Drawn with matplotlib's object API on the Agg canvas, like `hf_ddpm.plots`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .artifacts import RESULTS_FILE, read_json
from .commands.plot import StepsVsFidOptions, check_output
from .options import configure

RUN_SWEEP = "run `hf-ddpm evaluate PIPELINE --sweep ddpm:1000,100 ddim:10,20,50 ...` first, or pass its results"
NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpmsolver++": "DPM-Solver++(2M)", "unipc": "UniPC", "euler": "Euler",
         "euler-ancestral": "Euler ancestral"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
ALIKE = ("num_samples", "seed", "feature_extractor")  # what every point of one figure must share


def load_sampler_results(path) -> tuple[dict, dict, str]:
    """(dataset, samplers, file) of an eval_results.json with sampler results (`path`: the file or its folder)."""
    path = os.fspath(path)
    file = os.path.join(path, RESULTS_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} not found: {RUN_SWEEP}.")
    results = read_json(Path(file), fix=RUN_SWEEP)
    samplers = results.get("samplers") if isinstance(results, dict) else None
    if not isinstance(samplers, dict) or not samplers or not all(isinstance(r, dict) for r in samplers.values()):
        raise ValueError(f"{file} holds no sampler results ('samplers'): {RUN_SWEEP}.")
    return results.get("dataset") or {}, samplers, file


def sampler_curves(samplers: dict) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """({label: {"nfe", "fid", "kid", "kid_std", "seconds"}}, the settings all runs share): one curve per sampler
    (and eta), in the order of first appearance, sorted by NFE; a metric a run lacks is NaN."""
    points: dict[str, list[tuple]] = {}
    shared: dict[str, set] = {key: set() for key in ALIKE}
    for key, run in samplers.items():
        settings, metrics = run.get("settings") or {}, run.get("metrics") or {}
        if not ({"fid", "kid"} & set(metrics)):
            continue
        name = settings.get("scheduler") or key
        label = NAMES.get(name, name)
        if settings.get("eta"):
            label += f" (eta={settings['eta']:g})"
        nfe = settings.get("nfe") or settings.get("num_inference_steps")
        if not isinstance(nfe, (int, float)) or nfe <= 0:
            raise ValueError(f"sampler result {key!r} records no network evaluations (nfe): {RUN_SWEEP}.")
        points.setdefault(label, []).append((nfe, *(metrics.get(m, np.nan) for m in ("fid", "kid", "kid_std")),
                                             settings.get("sampling_seconds", np.nan)))
        for setting in ALIKE:
            shared[setting].add(settings.get(setting))
    if not points:
        raise ValueError(f"no sampler result has FID or KID: {RUN_SWEEP} with --metrics fid,kid.")
    differ = {setting: sorted(map(str, values)) for setting, values in shared.items() if len(values) > 1}
    if differ:
        raise ValueError(f"the sampler results are not comparable: they differ in {differ}; evaluate them again with "
                         "the same --num-samples and --seed (--overwrite, or a new --output).")
    curves = {}
    for label, rows in points.items():
        columns = np.array(sorted(rows, key=lambda row: row[0]), dtype=np.float64).T
        curves[label] = dict(zip(("nfe", "fid", "kid", "kid_std", "seconds"), columns))
    return curves, {setting: next(iter(values)) for setting, values in shared.items()}


def plot_steps_vs_fid(config: StepsVsFidOptions | str | os.PathLike, /, **options) -> str:
    """FID (left) and KID (right, with the std over KID subsets) against NFE, log NFE axis, one line per sampler."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    config = configure(StepsVsFidOptions, config, **options)
    dataset, samplers, file = load_sampler_results(config.results)
    curves, shared = sampler_curves(samplers)
    output = config.output or os.path.join(os.path.dirname(os.path.abspath(file)), "steps_vs_fid.png")
    check_output(output)
    panels = [m for m in ("fid", "kid") if any(np.isfinite(c[m]).any() for c in curves.values())]
    fig = Figure(figsize=(10, 4) if len(panels) == 2 else (5.5, 4), dpi=config.dpi)
    FigureCanvasAgg(fig)
    ticks = sorted({int(n) for curve in curves.values() for n in curve["nfe"]})
    for ax, metric in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for k, (label, curve) in enumerate(curves.items()):
            ok = np.isfinite(curve[metric])
            style = dict(color=f"C{k % 10}", marker=MARKERS[k % len(MARKERS)], markersize=5, linewidth=1.6,
                         label=label)
            if metric == "kid" and ok.any() and np.isfinite(curve["kid_std"][ok]).all():
                ax.errorbar(curve["nfe"][ok], curve["kid"][ok], yerr=curve["kid_std"][ok], capsize=3, elinewidth=0.8,
                            **style)
            else:
                ax.plot(curve["nfe"][ok], curve[metric][ok], **style)
        ax.set_xscale("log")
        if len(ticks) <= 10:  # the NFE values themselves, as plain numbers
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="network evaluations per image (NFE)", ylabel=metric.upper(),
               title=f"{metric.upper()} (lower is better)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    where = " ".join(str(dataset[k]) for k in ("name", "split") if dataset.get(k))
    reference = f" vs {dataset['num_images']} {where} images" if dataset.get("num_images") else (
        f" vs {where}" if where else "")
    fig.suptitle(config.title or f"sample quality against sampling cost: {shared['num_samples']} samples per point"
                                 f"{reference}, seed {shared['seed']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(output, dpi=config.dpi)
    return os.fspath(output)
