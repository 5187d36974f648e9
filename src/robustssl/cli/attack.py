"""``robustssl attack``: fit the task's head on a frozen encoder, attack it, print clean and robust metrics.

    robustssl attack --encoder convnet_small --data scenes --data-arg n=512 --task classification \\
        --attack pgd --eps 2/255,8/255 --steps 10 --n 128 --save adv.safetensors

``--encoder`` is a checkpoint path (loaded safely, no unpickling) or a registered encoder name. The head is
fitted on the ``train`` split (linear probe for classification, dense head for segmentation/depth; a held-out
part of ``train`` selects its hyper-parameters) and the first ``--n`` samples of ``--split`` are attacked.
A comma-separated ``--eps`` is an epsilon sweep. ``--save`` writes the adversarial images as safetensors
(``x_adv`` for one eps, ``x_adv_0``, ``x_adv_1``, ... in sweep order otherwise; metadata says the eps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from robustssl.cli.args import add_runtime_args, fraction_list, key_values

TASK_TARGET = {"classification": "label", "segmentation": "mask", "depth": "depth", "embedding": None}
HEADLINE = {
    "classification": "top1",
    "segmentation": "miou",
    "depth": "abs_rel",
    "embedding": "cosine_to_clean",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack",
        help="fit a head on a frozen encoder and attack it (clean vs robust metrics)",
        description="Fit the task's head on a frozen encoder, run an attack on the first N test "
        "samples and print clean and robust metrics per eps.",
    )
    p.add_argument("--encoder", required=True, metavar="PATH|NAME", help="checkpoint file or encoder name")
    p.add_argument(
        "--encoder-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="encoder constructor argument (JSON value), repeatable",
    )
    p.add_argument("--data", required=True, metavar="NAME", help="dataset name (robustssl data list)")
    p.add_argument("--root", default=None, help="dataset folder for datasets read from disk")
    p.add_argument(
        "--data-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset argument (JSON value), repeatable, e.g. --data-arg n=512 --data-arg size=32",
    )
    p.add_argument("--split", default="test", help="split attacked (default test); heads fit on 'train'")
    p.add_argument("--task", required=True, choices=tuple(TASK_TARGET))
    p.add_argument("--attack", default="pgd", metavar="NAME", help="attack name (default pgd)")
    p.add_argument(
        "--attack-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="attack constructor argument (JSON value), repeatable, e.g. --attack-arg restarts=2",
    )
    p.add_argument(
        "--objective",
        default=None,
        metavar="NAME",
        help="objective name (default by task: ce, seg-ce, depth-silog, embed-l2)",
    )
    p.add_argument(
        "--eps",
        type=fraction_list,
        default=[8 / 255],
        help="radius, or comma-separated radii for a sweep; fractions allowed (default 8/255)",
    )
    p.add_argument("--norm", default="linf", choices=("linf", "l2", "l1"))
    p.add_argument("--steps", type=int, default=None, help="attack steps (for attacks that take steps)")
    p.add_argument("--n", type=int, default=256, help="samples attacked (the first N of --split)")
    p.add_argument(
        "--n-train", type=int, default=None, help="train samples used to fit the head (default all)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="part of train held out for head selection"
    )
    p.add_argument("--head-epochs", type=int, default=10, help="epochs of a dense head")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--checks", action="store_true", help="run the gradient-masking checks on the first batch")
    p.add_argument("--save", default=None, metavar="FILE", help="write adversarial images (.safetensors)")
    p.add_argument("--json", action="store_true", help="print the result rows as JSON lines")
    add_runtime_args(p)
    p.set_defaults(func=run)


def _attack_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from robustssl.registry import UnknownNameError
    from robustssl.threats.attacks.base import build_attack

    kwargs = key_values(args.attack_arg, "--attack-arg")
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        kwargs["steps"] = args.steps
    try:
        build_attack(args.attack, **kwargs)  # fail before any work on arguments the attack does not take
    except UnknownNameError:
        raise
    except (TypeError, ValueError) as exc:
        hint = " (it takes no --steps)" if "steps" in kwargs and "'steps'" in str(exc) else ""
        raise ValueError(f"attack {args.attack!r}{hint}: {exc}") from exc
    return kwargs


def _encoder(args: argparse.Namespace) -> Any:
    from robustssl import encoders

    kwargs = key_values(args.encoder_arg, "--encoder-arg")
    if Path(args.encoder).expanduser().is_file():
        return encoders.load(
            str(Path(args.encoder).expanduser()), **({"encoder_kwargs": kwargs} if kwargs else {})
        )
    if any(sep in args.encoder for sep in ("/", "\\")) and ":" not in args.encoder:
        raise FileNotFoundError(f"--encoder {args.encoder!r}: no such checkpoint file")
    return encoders.create(args.encoder, **kwargs)


def _fit_model(args: argparse.Namespace, encoder: Any, device: Any, generator: Any) -> tuple[Any, dict]:
    from robustssl import data
    from robustssl.finetune.heads import fit_dense_head, fit_linear_probe, holdout_split
    from robustssl.heads.task_model import TaskModel

    if args.task == "embedding":
        return TaskModel(encoder, None, "embedding").eval(), {}
    train = data.load(args.data, root=args.root, split="train", **key_values(args.data_arg, "--data-arg"))
    n_train = len(train) if args.n_train is None else min(args.n_train, len(train))
    if n_train < 2:
        raise ValueError(f"need at least 2 training samples to fit a head, got {n_train}")
    fit_idx, val_idx = holdout_split(n_train, args.val_fraction, generator)
    common = dict(device=device, precision=args.precision, train_indices=fit_idx, val_indices=val_idx)
    if args.task == "classification":
        head, info = fit_linear_probe(encoder, train, train, batch_size=args.batch_size, **common)
    else:
        head, info = fit_dense_head(
            encoder,
            train,
            train,
            args.task,
            epochs=args.head_epochs,
            batch_size=args.batch_size,
            generator=generator,
            **common,
        )
    return TaskModel(encoder, head, args.task).to(device).eval(), info


def _metrics(
    model: Any, task: str, images: Any, targets: Any, clean_images: Any, args: argparse.Namespace, device: Any
) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from robustssl.data.base import TensorDataset
    from robustssl.finetune.heads import evaluate

    if task == "embedding":
        sims, dists = [], []
        with torch.no_grad():
            for start in range(0, images.shape[0], args.batch_size):
                a = model(images[start : start + args.batch_size].to(device)).float()
                b = model(clean_images[start : start + args.batch_size].to(device)).float()
                sims.append(F.cosine_similarity(a, b, dim=1).cpu())
                dists.append((a - b).norm(dim=1).cpu())
        return {
            "cosine_to_clean": float(torch.cat(sims).mean()),
            "l2_to_clean": float(torch.cat(dists).mean()),
            "n": images.shape[0],
        }
    dataset = TensorDataset(
        images.cpu(), name="adversarial", split=args.split, **{TASK_TARGET[task]: targets}
    )
    return evaluate(model, dataset, batch_size=args.batch_size, device=device, precision=args.precision)


def run(args: argparse.Namespace) -> int:
    import torch

    from robustssl import data, threats
    from robustssl.runtime import deterministic_mode, make_generator, resolve_device

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.eps:
        raise ValueError("--eps is empty; give a radius such as 8/255")
    if args.save is not None and not args.save.endswith(".safetensors"):
        raise ValueError(
            f"--save writes safetensors: the file name must end in .safetensors, got {args.save!r}"
        )
    device = resolve_device(args.device)
    threats.ThreatModel(args.norm, min(args.eps))  # a negative eps fails here, before any work
    attack_kwargs = _attack_kwargs(args)
    generator = make_generator(args.seed, device)
    with deterministic_mode(args.deterministic):
        encoder = _encoder(args).to(device).eval()
        model, fit_info = _fit_model(args, encoder, device, make_generator(args.seed))
        test = data.load(
            args.data, root=args.root, split=args.split, **key_values(args.data_arg, "--data-arg")
        )
        key = TASK_TARGET[args.task]
        if key is not None:
            test.require(key, purpose=f"attacking a {args.task} model")
        n = min(args.n, len(test))
        eps_sorted = sorted(args.eps)
        clean_images, targets, adv = [], [], [[] for _ in eps_sorted]
        totals = [{"fwd": 0, "bwd": 0, "seconds": 0.0} for _ in eps_sorted]
        start = time.perf_counter()
        for i, batch in enumerate(test.batches(args.batch_size, indices=range(n))):
            x = batch["image"].to(device)
            target = batch[key].to(device) if key is not None else None
            if target is not None and args.task == "classification":
                target = target.long()
            if i == 0 and args.checks:
                objective = threats.api.resolve_objective(args.objective, model, target)
                report = threats.check_gradient_masking(model, x, target, objective, generator=generator)
                print(
                    "gradient-masking checks: " + ("none flagged" if report.ok else "; ".join(report.flags))
                )
            sweep = threats.attack(
                model,
                x,
                target,
                args.attack,
                eps=eps_sorted,
                norm=args.norm,
                objective=args.objective,
                generator=generator,
                precision=args.precision,
                **attack_kwargs,
            )
            for j, result in enumerate(sweep):
                adv[j].append(result.x_adv.cpu())
                totals[j]["fwd"] += result.fwd
                totals[j]["bwd"] += result.bwd
                totals[j]["seconds"] += result.seconds
            clean_images.append(x.cpu())
            if target is not None:
                targets.append(target.cpu())
        attack_seconds = time.perf_counter() - start
    clean = torch.cat(clean_images)
    target_all = torch.cat(targets) if targets else None
    clean_metrics = _metrics(model, args.task, clean, target_all, clean, args, device)
    rows = []
    for j, eps in enumerate(eps_sorted):
        robust = _metrics(model, args.task, torch.cat(adv[j]), target_all, clean, args, device)
        rows.append(
            {
                "attack": args.attack,
                "norm": args.norm,
                "eps": eps,
                "n": n,
                "task": args.task,
                "clean": clean_metrics,
                "robust": robust,
                **totals[j],
            }
        )
    _print(rows, args, fit_info, attack_seconds)
    if args.save is not None:
        _save(args, [torch.cat(a) for a in adv], eps_sorted)
    return 0


def _print(rows: list[dict[str, Any]], args: argparse.Namespace, fit_info: dict, seconds: float) -> None:
    if args.json:
        for row in rows:
            print(json.dumps(row, default=float))
        return
    if fit_info:
        shown = {k: round(v, 4) for k, v in fit_info.items() if isinstance(v, float)}
        print(f"head fitted: {shown}")
    metric = HEADLINE[args.task]
    print(f"{args.attack} ({args.norm}) on {args.task}, n={rows[0]['n']}, {seconds:.1f}s")
    print(f"{'eps':>10}  {'clean ' + metric:>22}  {'robust ' + metric:>22}  {'fwd':>9}  {'bwd':>9}")
    for row in rows:
        eps = row["eps"]
        eps_text = f"{eps * 255:.3g}/255" if args.norm == "linf" else f"{eps:.4g}"
        print(
            f"{eps_text:>10}  {row['clean'][metric]:>22.4f}  {row['robust'][metric]:>22.4f}  "
            f"{row['fwd']:>9}  {row['bwd']:>9}"
        )


def _save(args: argparse.Namespace, images: list[Any], eps: list[float]) -> None:
    from safetensors.torch import save_file

    path = Path(args.save).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = (
        {"x_adv": images[0].contiguous()}
        if len(images) == 1
        else {f"x_adv_{i}": img.contiguous() for i, img in enumerate(images)}
    )
    metadata = {
        "attack": args.attack,
        "norm": args.norm,
        "eps": json.dumps(eps),
        "task": args.task,
        "data": args.data,
        "split": args.split,
        "encoder": args.encoder,
        "seed": str(args.seed),
    }
    save_file(tensors, str(path), metadata=metadata)
    print(f"saved {', '.join(tensors)} to {path}")
