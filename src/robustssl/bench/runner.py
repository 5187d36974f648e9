"""The benchmark runner: ``run(spec)`` (``robustssl bench SPEC.yaml``) expands a spec into cells, runs the
pending ones and commits each unit of work to the result store.

Order of work, all of it after :func:`robustssl.bench.resources.prepare` has checked the spec:

1. pretrain the preset encoders the pending cells need (or reuse finished runs in ``runs/<name>/encoders``);
2. fine-tune a head per (encoder, task) with the task's protocol, or load it from ``runs/<name>/heads`` where
   an earlier attempt cached it (safetensors, keyed by a hash of everything it depends on);
3. run the pending units (see ``plan.py``): clean, embedding attacks, task attacks, transfer, shift sets and
   corruptions. Forward passes that only measure run under ``torch.inference_mode``; a frozen encoder's
   features are computed once per batch and shared by every task's head; a corrupted batch is made once and
   shared by every encoder and task.

Reproducibility: every generator is seeded from the spec seed, the unit's key and the chunk index, so a
resumed run, or a run on more ranks, computes exactly the same values. Under ``torchrun`` head fitting is
sharded by (encoder, task) and every unit's chunks of samples by rank; chunk statistics are gathered and rank
0 adds them up in chunk order and writes the store and the report.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustssl import __version__, threats
from robustssl.bench import scores
from robustssl.bench.plan import EMBEDDING_TASK, Unit, build_plan, chunks, head_hash, pending, threat_variants
from robustssl.bench.resources import Resources, prepare
from robustssl.bench.spec import BenchSpec, attack_kwargs, load_spec, spec_as_yaml
from robustssl.bench.store import STORE_FILE, Store
from robustssl.encoders.base import Encoder
from robustssl.heads.task_model import TaskModel
from robustssl.runtime import distributed
from robustssl.runtime.device import resolve_device
from robustssl.runtime.logging import get_logger
from robustssl.runtime.precision import autocast
from robustssl.runtime.progress import progress
from robustssl.runtime.seeding import make_generator
from robustssl.threats.corruptions.api import derive_seed

log = get_logger(__name__)
HEAD_FORMAT = "robustssl.bench.head/1"


@dataclass
class Fitted:
    """A task model; ``shared`` when it runs the benchmark's own (frozen) encoder, whose features can then be
    computed once for every task."""

    model: TaskModel
    shared: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSummary:
    run_dir: Path
    units: int
    computed: int
    cells: int
    seconds: float
    report: Path | None = None


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class Runner:
    """Holds a run's encoders and task models and computes units (see the module docstring)."""

    def __init__(self, spec: BenchSpec, res: Resources, run_dir: Path):
        self.spec, self.res, self.run_dir, self.device = spec, res, run_dir, res.device
        self.bases: dict[str, Encoder] = {}
        self.models: dict[tuple[str, str], Fitted] = {}
        self._clean_embeddings: dict[tuple[str, str, int], torch.Tensor] = {}
        #: encoders whose embedding is exactly the spatial mean of their dense map (checked on test images)
        self.pooled: dict[str, bool] = {}

    # --- encoders and heads ---------------------------------------------------------------------------------
    def load_encoders(self, labels: list[str]) -> None:
        """Load (pretraining presets if needed) the encoders ``labels``, and find those whose embedding is
        their pooled dense map (ConvNet and ResNet here): their features then cost one forward pass."""
        test = self.res.tasks[self.spec.tasks[0].label].test
        probe = test.take(range(min(2, len(test))))["image"].to(self.device)
        for label in labels:
            if label in self.bases:
                continue
            enc = self.spec.encoder(label)
            pretrains = enc.source == "preset" and not enc.random_init
            log.info("encoder %s: loading%s", label, " (pretraining unless finished)" if pretrains else "")
            base = self.bases[label] = self.res.encoder(label, self.run_dir)
            with torch.inference_mode(), autocast(self.device, self.spec.precision):
                # exact equality, not closeness: the shortcut must not change a single value
                self.pooled[label] = torch.equal(base.embed(probe), base.dense(probe).mean(dim=(2, 3)))

    def _head_dir(self, encoder: str, task: str) -> Path:
        digest = head_hash(self.spec, self.res.identities[encoder], self.spec.task(task), encoder)
        return self.run_dir / "heads" / encoder / f"{task}-{digest}"

    def prepare_heads(self, pairs: list[tuple[str, str]], store: Store | None) -> None:
        """Fit (sharded over ranks) or load the task model of every ``(encoder, task)`` in ``pairs``."""
        from robustssl.finetune.checkpoint import MODEL_FILE, load_task_model

        to_fit = []
        for enc, task in pairs:
            folder = self._head_dir(enc, task)
            if (folder / "done").is_file():
                self.models[enc, task] = self._load_frozen(enc, task, folder)
            elif (folder / MODEL_FILE).is_file():
                model = load_task_model(folder, map_location=self.device)
                self.models[enc, task] = Fitted(model, False, {})
            else:
                to_fit.append((enc, task))
        mine = distributed.shard(to_fit)
        fitted = {}
        for enc, task in mine:
            fitted[enc, task] = self._fit(enc, task)
        for part in distributed.gather_objects(fitted):
            for (enc, task), payload in part.items():
                self.models[enc, task] = self._from_payload(enc, task, payload)
                if distributed.is_main():
                    self._save(enc, task, payload)
                    if store is not None:
                        digest = self._head_dir(enc, task).name.rsplit("-", 1)[1]
                        store.record_head(enc, task, digest, payload["info"])
        distributed.barrier()

    def _fit(self, encoder: str, task: str) -> dict[str, Any]:
        """Fine-tune ``task`` on ``encoder``; returns CPU state dicts and the info (shared between ranks)."""
        from robustssl.finetune import finetune
        from robustssl.finetune.checkpoint import head_config

        spec_task = self.spec.task(task)
        data = self.res.tasks[task]
        base = self.bases[encoder]
        options = dict(spec_task.options)
        if data.val is None:
            options.setdefault("val_fraction", self.spec.budgets.val_fraction)
        log.info(
            "%s x %s: fine-tuning (%s, %d train, %s val)",
            encoder,
            task,
            spec_task.protocol,
            len(data.train),
            len(data.val) if data.val is not None else "held-out",
        )
        start, cpu = time.perf_counter(), time.process_time()
        seed = derive_seed(self.spec.seed, "head", encoder, task)
        result = finetune(  # every head's initial weights derive from ``seed`` (finetune pins them)
            base,
            data.train,
            data.val,
            task=spec_task.kind,
            protocol=spec_task.protocol,
            seed=seed,
            device=self.device,
            precision=self.spec.precision,
            **options,
        )
        base.eval()
        shared = result.model.encoder is base
        info = _json_safe({**result.info, "seconds": time.perf_counter() - start})
        info.pop("history", None)
        log.info(
            "%s x %s: fitted in %.1f s (%.1f s CPU), validation %s %.4f",
            encoder,
            task,
            info["seconds"],
            time.process_time() - cpu,
            info.get("val_metric", "score"),
            info.get("val_score", float("nan")),
        )
        payload = {
            "config": head_config(result.model.head),
            "task": spec_task.kind,
            "shared": shared,
            "head": {k: v.detach().cpu() for k, v in result.model.head.state_dict().items()},
            "info": info,
        }
        if not shared:
            payload["encoder"] = {k: v.detach().cpu() for k, v in result.model.encoder.state_dict().items()}
        return payload

    def _from_payload(self, encoder: str, task: str, payload: dict[str, Any]) -> Fitted:
        from robustssl.finetune.checkpoint import HEAD_TYPES

        config = payload["config"]
        head = HEAD_TYPES[config["type"]](**config["kwargs"])
        head.load_state_dict(payload["head"], strict=True)
        base = self.bases[encoder]
        if payload["shared"]:
            enc = base
        else:
            enc = copy.deepcopy(base)
            enc.load_state_dict(payload["encoder"], strict=True)
        model = TaskModel(enc, head.to(self.device), payload["task"]).to(self.device).eval()
        return Fitted(model, payload["shared"], payload["info"])

    def _save(self, encoder: str, task: str, payload: dict[str, Any]) -> None:
        from robustssl.encoders.checkpoints import save_state
        from robustssl.finetune.checkpoint import save_task_model

        folder = self._head_dir(encoder, task)
        if folder.exists():
            shutil.rmtree(folder)
        if payload["shared"]:
            save_state(folder / "head.safetensors", {"format": HEAD_FORMAT, **payload})
            (folder / "done").write_text("complete\n")  # written last: a folder without it is incomplete
        else:
            save_task_model(self.models[encoder, task].model, folder, info=payload["info"])

    def _load_frozen(self, encoder: str, task: str, folder: Path) -> Fitted:
        from robustssl.encoders.checkpoints import load_state

        payload = load_state(folder / "head.safetensors")
        if payload.get("format") != HEAD_FORMAT:
            raise ValueError(
                f"{folder / 'head.safetensors'} is not a cached benchmark head; delete the folder"
            )
        return self._from_payload(encoder, task, payload)

    # --- forward passes -------------------------------------------------------------------------------------
    def _features(self, encoder: str, x: torch.Tensor, want: set[str]) -> dict[str, torch.Tensor]:
        """The base encoder's ``embed`` and/or ``dense`` features of ``x`` (call under inference mode); for an
        encoder whose embedding is its pooled dense map, one forward pass gives both."""
        base = self.bases[encoder]
        pooled = self.pooled.get(encoder, False)
        feats = {}
        if "dense" in want or ("embed" in want and pooled):
            feats["dense"] = base.dense(x)
        if "embed" in want:
            feats["embed"] = feats["dense"].mean(dim=(2, 3)) if pooled else base.embed(x)
        return feats

    def _outputs(
        self, encoder: str, tasks: list[str], x: torch.Tensor, need_embed: bool = False
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Every task model's output on ``x`` (float32), and the base encoder's embedding when asked for (or
        computed anyway); frozen-encoder features are computed once and shared by the heads."""
        want = {"embed"} if need_embed else set()
        for task in tasks:
            fitted = self.models[encoder, task]
            if fitted.shared:
                want.add("embed" if fitted.model.task == "classification" else "dense")
        outs: dict[str, torch.Tensor] = {}
        size = tuple(x.shape[-2:])
        with torch.inference_mode(), autocast(self.device, self.spec.precision):
            feats = self._features(encoder, x, want)
            for task in tasks:
                fitted = self.models[encoder, task]
                if not fitted.shared:
                    outs[task] = fitted.model(x).float()
                elif fitted.model.task == "classification":
                    outs[task] = fitted.model.head(feats["embed"]).float()
                else:
                    outs[task] = fitted.model.head(feats["dense"], size=size).float()
        emb = feats.get("embed")
        return outs, None if emb is None else emb.float()

    def _clean_embedding(self, encoder: str, data: str, k: int, idx: range) -> torch.Tensor:
        key = (encoder, data, k)
        if key not in self._clean_embeddings:
            x = self.res.tasks[data].test.take(idx)["image"].to(self.device)
            with torch.inference_mode(), autocast(self.device, self.spec.precision):
                self._clean_embeddings[key] = self._features(encoder, x, {"embed"})["embed"].float()
        return self._clean_embeddings[key]

    def _generator(self, unit: Unit, k: int) -> torch.Generator:
        return make_generator(derive_seed(self.spec.seed, unit.key, k), self.device)

    # --- units ----------------------------------------------------------------------------------------------
    def unit_size(self, unit: Unit) -> int:
        return min(unit.n, len(self.res.test_set(unit.data, unit.threat)))

    def compute(self, unit: Unit) -> dict[int, dict[tuple[str, str, str], dict[str, Any]]]:
        """This rank's chunks of ``unit``: ``{chunk: {cell key: {stats, fwd, bwd, seconds}}}``."""
        rank, world = distributed.rank(), distributed.world_size()
        out = {}
        for k, idx in enumerate(chunks(self.unit_size(unit), self.spec.budgets.batch_size)):
            if k % world == rank:
                out[k] = getattr(self, f"_chunk_{unit.kind}")(unit, k, idx)
        return out

    def _batch(self, unit: Unit, idx: range) -> dict[str, torch.Tensor]:
        batch = self.res.test_set(unit.data, unit.threat).take(idx)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _task_entry(
        self, task: str, output: torch.Tensor, batch: dict[str, torch.Tensor], **counts: Any
    ) -> dict[str, Any]:
        spec_task = self.spec.task(task)
        depth_range = self.res.tasks[task].test.depth_range
        return {
            "stats": scores.task_stats(spec_task.kind, output, batch[spec_task.target], depth_range),
            **counts,
        }

    def _chunk_forward(self, unit: Unit, k: int, idx: range) -> dict[tuple[str, str, str], dict[str, Any]]:
        variant = unit.variants[0]
        batch = self._batch(unit, idx)
        x = batch["image"]
        start = time.perf_counter()
        if variant.corruption is not None:
            x = threats.corrupt(
                x,
                variant.corruption,
                variant.severity,
                generator=self._generator(unit, k),
                params=unit.threat.params,
            )
        shared = (time.perf_counter() - start) / len(unit.encoders)
        out = {}
        for enc in unit.encoders:
            start = time.perf_counter()
            outs, emb = self._outputs(enc, unit.tasks, x, need_embed=unit.drift)
            seconds = (time.perf_counter() - start + shared) / (len(unit.tasks) + unit.drift)
            for task in unit.tasks:
                out[enc, task, variant.label] = self._task_entry(
                    task, outs[task], batch, fwd=len(idx), bwd=0, seconds=seconds
                )
            if unit.drift:
                clean = self._clean_embedding(enc, unit.data, k, idx)
                out[enc, EMBEDDING_TASK, variant.label] = {
                    "stats": scores.drift_stats(clean, emb),
                    "fwd": len(idx),
                    "bwd": 0,
                    "seconds": seconds,
                }
        return out

    def _sweep(self, unit: Unit, model: Any, x: torch.Tensor, target: Any, k: int) -> list[Any]:
        threat = unit.threat
        sweep = threats.attack(
            model,
            x,
            target,
            threat.attack,
            eps=list(threat.eps),
            norm=threat.norm,
            objective=threat.objective,
            generator=self._generator(unit, k),
            precision=self.spec.precision,
            **attack_kwargs(threat, self.spec.budgets.steps),
        )
        return list(sweep)

    def _chunk_attack(self, unit: Unit, k: int, idx: range) -> dict[tuple[str, str, str], dict[str, Any]]:
        enc, task = unit.encoders[0], unit.tasks[0]
        batch = self._batch(unit, idx)
        target = batch[self.spec.task(task).target]
        out = {}
        sweep = self._sweep(unit, self.models[enc, task].model, batch["image"], target, k)
        for variant, result in zip(unit.variants, sweep, strict=True):
            start = time.perf_counter()
            outs, _ = self._outputs(enc, [task], result.x_adv)
            seconds = result.seconds + time.perf_counter() - start
            out[enc, task, variant.label] = self._task_entry(
                task, outs[task], batch, fwd=result.fwd + len(idx), bwd=result.bwd, seconds=seconds
            )
        return out

    def _chunk_embedding(self, unit: Unit, k: int, idx: range) -> dict[tuple[str, str, str], dict[str, Any]]:
        enc = unit.encoders[0]
        batch = self._batch(unit, idx)
        model = TaskModel(self.bases[enc], None, "embedding").eval()
        clean = self._clean_embedding(enc, unit.data, k, idx)
        out = {}
        for variant, result in zip(
            unit.variants, self._sweep(unit, model, batch["image"], None, k), strict=True
        ):
            start = time.perf_counter()
            outs, emb = self._outputs(enc, unit.tasks, result.x_adv, need_embed=True)
            seconds = (result.seconds + time.perf_counter() - start) / (len(unit.tasks) + 1)
            counts = {"fwd": result.fwd + len(idx), "bwd": result.bwd, "seconds": seconds}
            out[enc, EMBEDDING_TASK, variant.label] = {"stats": scores.drift_stats(clean, emb), **counts}
            for task in unit.tasks:
                out[enc, task, variant.label] = self._task_entry(task, outs[task], batch, **counts)
        return out

    def _chunk_transfer(self, unit: Unit, k: int, idx: range) -> dict[tuple[str, str, str], dict[str, Any]]:
        task = unit.tasks[0]
        batch = self._batch(unit, idx)
        target = batch[self.spec.task(task).target]
        surrogate = self.models[unit.surrogate, task].model
        out = {}
        for variant, result in zip(
            unit.variants, self._sweep(unit, surrogate, batch["image"], target, k), strict=True
        ):
            for enc in unit.encoders:
                start = time.perf_counter()
                outs, _ = self._outputs(enc, [task], result.x_adv)
                seconds = result.seconds / len(unit.encoders) + time.perf_counter() - start
                out[enc, task, variant.label] = self._task_entry(
                    task, outs[task], batch, fwd=result.fwd + len(idx), bwd=result.bwd, seconds=seconds
                )
        return out

    def rows(
        self, unit: Unit, parts: dict[int, dict[tuple[str, str, str], dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """The unit's result rows from every chunk's statistics, added up in chunk order."""
        order = sorted(parts)
        n = self.unit_size(unit)
        rows = []
        for cell in unit.cells:
            entries = [parts[k][cell.key] for k in order]
            kind = EMBEDDING_TASK if cell.task == EMBEDDING_TASK else self.spec.task(cell.task).kind
            values = scores.combine(kind, [e["stats"] for e in entries])
            for metric in scores.METRICS[kind]:
                rows.append(
                    {
                        "run": self.spec.name,
                        "encoder": cell.encoder,
                        "task": cell.task,
                        "threat": cell.threat,
                        "metric": metric,
                        "value": float(values[metric]),
                        "n": n,
                        "seconds": round(sum(e["seconds"] for e in entries), 4),
                        "fwd": sum(e["fwd"] for e in entries),
                        "bwd": sum(e["bwd"] for e in entries),
                        "config_hash": cell.config_hash,
                        "version": __version__,
                    }
                )
        return rows


# --- the run ------------------------------------------------------------------------------------------------
def _descriptions(spec: BenchSpec, res: Resources) -> tuple[list[dict], list[dict], list[dict]]:
    threat_rows = []
    for threat in spec.threats:
        entry = json.dumps({k: v for k, v in threat.__dict__.items() if k != "where"}, default=str)
        for v in threat_variants(threat):
            threat_rows.append(
                {
                    "threat": v.label,
                    "kind": v.kind,
                    "attack": v.attack,
                    "norm": v.norm,
                    "eps": v.eps,
                    "corruption": v.corruption,
                    "severity": v.severity,
                    "data": v.data,
                    "entry": entry,
                }
            )
    task_rows = [
        {"task": t.label, "kind": t.kind, "data": t.data, "protocol": t.protocol} for t in spec.tasks
    ]
    task_rows.append(
        {"task": EMBEDDING_TASK, "kind": EMBEDDING_TASK, "data": spec.embedding_task().data, "protocol": None}
    )
    enc_rows = [
        {"encoder": e.label, "source": e.source, "details": json.dumps(res.identities[e.label], default=str)}
        for e in spec.encoders
    ]
    return threat_rows, task_rows, enc_rows


def _open_store(run_dir: Path, resume: bool, overwrite: bool) -> Store:
    """The run's store: fresh with ``overwrite``; an existing one with finished cells only with ``resume``."""
    file = run_dir / STORE_FILE
    if overwrite:
        for path in (file, file.with_name(STORE_FILE + "-wal"), file.with_name(STORE_FILE + "-shm")):
            path.unlink(missing_ok=True)
        shutil.rmtree(run_dir / "heads", ignore_errors=True)
    store = Store(file)
    if not resume and store.finished_cells():
        count = len(store.finished_cells())
        store.close()
        raise ValueError(
            f"{run_dir} already holds {count} finished cells of an earlier run; pass --resume to "
            "continue it (finished cells are kept, changed ones recomputed) or --overwrite to start over"
        )
    return store


def run(
    spec: BenchSpec | str | Path,
    out_root: str | Path = "runs",
    *,
    resume: bool = False,
    overwrite: bool = False,
    overrides: list[str] | None = None,
    report: bool = True,
) -> RunSummary:
    """Run (or resume) the benchmark ``spec`` (a :class:`BenchSpec`, a shipped spec name or a YAML path)
    into ``out_root/<name>/``: ``results.sqlite``, cached ``heads/``, pretrained ``encoders/`` and, unless
    ``report=False``, the report (``report.html``, ``summary.md``, ``plots/``). Returns a summary."""
    started = time.perf_counter()
    if not isinstance(spec, BenchSpec):
        spec = load_spec(spec, overrides)
    device = resolve_device(spec.device)
    distributed.init(device)
    device = distributed.local_device(device)
    res = prepare(spec, device)
    units = build_plan(spec, res.identities)
    run_dir = Path(out_root).expanduser() / spec.name
    main = distributed.is_main()
    store: Store | None = None
    status: Any = None
    if main:
        try:
            store = _open_store(run_dir, resume, overwrite)
            status = store.finished_cells()
        except ValueError as exc:
            status = str(exc)
    status = distributed.broadcast_object(status)
    if isinstance(status, str):
        raise ValueError(status)
    todo = pending(units, status)
    cells = sum(len(u.cells) for u in units)
    attempt = 0
    if store is not None:
        attempt = store.begin_attempt(spec.digest(), distributed.world_size(), __version__)
        store.set_meta(
            {
                "run": spec.name,
                "spec": spec_as_yaml(spec),
                "spec_digest": spec.digest(),
                "description": spec.description,
                "source": spec.source,
                "version": __version__,
            }
        )
        store.describe(*_descriptions(spec, res))
        stale = store.prune({c.key for u in units for c in u.cells})
        if stale:
            log.info("removed %d cells that the spec no longer has", stale)
    log.info(
        "%s: %d cells in %d units; %d units to compute (%d cells finished)",
        spec.name,
        cells,
        len(units),
        len(todo),
        cells - sum(len(u.cells) for u in todo),
    )
    status_text = "failed"
    try:
        if todo:
            _compute(spec, res, run_dir, todo, store, attempt)
        status_text = "finished"
    except KeyboardInterrupt:
        status_text = "interrupted"
        raise
    finally:
        if store is not None:
            store.finish_attempt(attempt, status_text)
            store.close()
    summary = RunSummary(run_dir, len(units), len(todo), cells, time.perf_counter() - started)
    if main and report:
        from robustssl.bench.report import write_report

        summary.report = write_report(run_dir)
    distributed.barrier()
    return summary


def _compute(
    spec: BenchSpec, res: Resources, run_dir: Path, todo: list[Unit], store: Store | None, attempt: int
) -> None:
    runner = Runner(spec, res, run_dir)
    pairs: dict[tuple[str, str], None] = {}
    encoders: dict[str, None] = {}
    for unit in todo:
        for enc in unit.encoders:
            encoders[enc] = None
            for task in unit.tasks:
                pairs[enc, task] = None
        if unit.surrogate is not None:
            encoders[unit.surrogate] = None
            pairs.update({(unit.surrogate, t): None for t in unit.tasks})
    runner.load_encoders([e.label for e in spec.encoders if e.label in encoders])
    runner.prepare_heads(sorted(pairs), store)
    bar = progress(total=len(todo), desc=f"bench {spec.name}", unit="unit")
    for i, unit in enumerate(todo):
        start, cpu = time.perf_counter(), time.process_time()
        merged: dict[int, Any] = {}
        for part in distributed.gather_objects(runner.compute(unit)):
            merged.update(part)
        seconds = time.perf_counter() - start
        if store is not None:
            rows = runner.rows(unit, merged)
            store.write_unit([(*c.key, c.config_hash) for c in unit.cells], rows, attempt, seconds)
            # CPU time next to wall time: on a shared machine the two tell load from work
            log.info(
                "[%d/%d] %s: %d cells in %.1f s (this process: %.1f s CPU)",
                i + 1,
                len(todo),
                unit.describe(),
                len(unit.cells),
                seconds,
                time.process_time() - cpu,
            )
        bar.update(1)
    bar.close()
