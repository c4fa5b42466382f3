"""Run folders: `<output_dir>/<model_name>/<run_id>/`, plus a `latest` pointer per model."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from utils.errors import UserError


def new_run_dir(cfg: dict, model_name: str | None = None) -> Path:
    model_name = model_name or cfg["model_name"]
    base = Path(cfg["output_dir"]) / model_name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        base.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            run = base / (stamp if i == 0 else f"{stamp}-{i}")
            try:
                run.mkdir()
                break
            except FileExistsError:
                continue
        probe = run / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {base}: not writable ({e.strerror or e})") from None
    return run


def mark_latest(run_dir: Path) -> None:
    """Point `<output_dir>/<model_name>/latest` at run_dir (a symlink, or a text file where links fail)."""
    run_dir = Path(run_dir)
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    try:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
    except OSError:
        try:
            if link.is_symlink():
                link.unlink()
            link.write_text(run_dir.name + "\n")
        except OSError:
            pass


def resolve_run_dir(path: str | Path, what: str = "run folder") -> Path:
    """Accept a run folder, `<model>/latest` (link or pointer file), or a model folder (-> its latest)."""
    p = Path(path)
    if p.is_file() and p.name == "latest":
        p = p.parent / p.read_text().strip()
    elif p.is_dir() and not (p / "config.json").exists() and (p / "latest").exists():
        return resolve_run_dir(p / "latest", what)
    if not p.is_dir():
        raise UserError(f"{what} {path}: not found")
    if not (p / "config.json").is_file():
        raise UserError(f"{what} {path}: not a run folder (no config.json)")
    return p.resolve()


def read_run_config(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"run folder {run_dir}: config.json unreadable ({e.__class__.__name__})") from None
