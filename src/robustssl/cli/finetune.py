"""``robustssl finetune``: fine-tune a head (slf, alf) or the whole model (aff, ft), save it, test it.

    robustssl finetune --encoder runs/simclr/encoder.safetensors --data scenes --task classification \\
        --protocol aff --loss trades --beta 6 --epochs 25 --eps 8/255 --out runs/aff --eval-attack pgd

``--encoder`` is a checkpoint (loaded safely) or a registered encoder name (freshly initialized from
``--seed``). Training data is the ``train`` split; selection uses the dataset's ``val`` split when it has one,
else a held-out ``--val-fraction`` of ``train``; the test split (``--eval-split``) is only evaluated, after
selection. ``--out DIR`` receives ``model.json`` + ``encoder.safetensors`` + ``head.safetensors``
(``robustssl.finetune.load_task_model(DIR)`` reads them back). Protocol options without a flag of their own
go through ``--option KEY=VALUE`` (``--option schedule=cosine``, ``--option 'head={"mode": "regression"}'``).
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

from robustssl.cli.args import add_runtime_args, fraction, fraction_list, key_values

PROTOCOL_CHOICES = ("slf", "alf", "aff", "ft")
TASK_CHOICES = ("classification", "segmentation", "depth")
HEADLINE = {"classification": "top1", "segmentation": "miou", "depth": "rmse"}
DEFAULT_EVAL_STEPS = 20  # PGD-20 at test time, as AdvCL evaluates its fine-tuned models


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune an encoder for a task (slf, alf, aff, ft) and report test metrics",
        description="Fine-tune a task head on a frozen encoder (slf, alf) or the whole model (aff, ft), "
        "selecting hyper-parameters on validation data, save the model and print clean (and robust) "
        "metrics on the test split.",
    )
    p.add_argument("--encoder", required=True, metavar="PATH|NAME", help="checkpoint file or encoder name")
    p.add_argument("--encoder-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="encoder constructor argument (JSON value), repeatable")
    p.add_argument("--data", required=True, metavar="NAME", help="dataset name (robustssl data list)")
    p.add_argument("--root", default=None, help="dataset folder for datasets read from disk")
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset argument (JSON value), repeatable, e.g. --data-arg n=512")
    p.add_argument("--task", required=True, choices=TASK_CHOICES)
    p.add_argument("--protocol", required=True, choices=PROTOCOL_CHOICES)
    group = p.add_argument_group("protocol options (unset: the protocol's defaults)")
    group.add_argument("--epochs", type=int, default=None)
    group.add_argument("--lr", type=fraction_list, default=None, help="learning rate, or a comma list (grid)")
    group.add_argument("--weight-decay", type=fraction_list, default=None,
                       help="weight decay, or a comma list (grid)")
    group.add_argument("--batch-size", type=int, default=None)
    group.add_argument("--eps", type=fraction, default=None, help="training radius (default 8/255)")
    group.add_argument("--norm", default=None, choices=("linf", "l2", "l1"))
    group.add_argument("--steps", type=int, default=None, help="PGD steps of the training attack (10)")
    group.add_argument("--step-size", type=fraction, default=None, help="PGD step size (default 2/255)")
    group.add_argument("--loss", default=None, choices=("trades", "pgd-at"), help="aff's objective")
    group.add_argument("--beta", type=float, default=None, help="TRADES weight (default 6)")
    group.add_argument("--select", default=None, choices=("clean", "robust"),
                       help="validation metric for selection (alf/aff: robust, ft: clean)")
    group.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other protocol option (JSON value), repeatable")
    p.add_argument("--n-train", type=int, default=None, help="use the first N training samples")
    p.add_argument("--n-val", type=int, default=None, help="use the first N validation samples")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="part of train held out for selection when the dataset has no val split")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for model.json and the weights")
    ev = p.add_argument_group("test evaluation")
    ev.add_argument("--eval-split", default="test", help="split evaluated (default test)")
    ev.add_argument("--n-test", type=int, default=None, help="evaluate the first N samples (default all)")
    ev.add_argument("--eval-attack", default=None, metavar="NAME", help="also report robust metrics")
    ev.add_argument("--eval-eps", type=fraction, default=None, help="attack radius (default --eps or 8/255)")
    ev.add_argument("--eval-steps", type=int, default=None,
                    help=f"attack steps for attacks that take steps (default {DEFAULT_EVAL_STEPS})")
    ev.add_argument("--eval-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="attack constructor argument (JSON value), repeatable")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_runtime_args(p)
    p.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Protocol options given on the command line (flags left unset keep the protocol's defaults)."""
    options = key_values(args.option, "--option")
    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "eps": args.eps, "norm": args.norm,
             "steps": args.steps, "step_size": args.step_size, "loss": args.loss, "beta": args.beta,
             "select": args.select}
    for name, values in (("lr", args.lr), ("weight_decay", args.weight_decay)):
        if values is not None:
            flags[name] = values[0] if len(values) == 1 else values
    for name, value in flags.items():
        if value is not None:
            if name in options:
                raise ValueError(f"option {name!r} given twice (--{name.replace('_', '-')} and --option)")
            options[name] = value
    return options


def _eval_attack(args: argparse.Namespace) -> dict[str, Any] | None:
    """The test-time attack's constructor arguments, checked before any work (None: no attack)."""
    if args.eval_attack is None:
        if args.eval_steps is not None or args.eval_arg or args.eval_eps is not None:
            raise ValueError("--eval-eps/--eval-steps/--eval-arg configure --eval-attack, which is not set")
        return None
    from robustssl.threats.attacks import ATTACKS
    from robustssl.threats.attacks.base import build_attack

    kwargs = key_values(args.eval_arg, "--eval-arg")
    factory = ATTACKS.get(args.eval_attack)  # unknown names list the registered ones
    takes_steps = "steps" in inspect.signature(factory).parameters
    if args.eval_steps is not None and not takes_steps:
        raise ValueError(f"attack {args.eval_attack!r} takes no steps; drop --eval-steps")
    if takes_steps and "steps" not in kwargs:
        kwargs["steps"] = args.eval_steps if args.eval_steps is not None else DEFAULT_EVAL_STEPS
    try:
        build_attack(args.eval_attack, **kwargs)
    except TypeError as exc:
        raise ValueError(f"attack {args.eval_attack!r}: {exc}") from exc
    return kwargs


def _load_encoder(args: argparse.Namespace) -> Any:
    from robustssl import encoders
    from robustssl.runtime import seeded_init

    kwargs = key_values(args.encoder_arg, "--encoder-arg")
    path = Path(args.encoder).expanduser()
    if path.is_file():
        return encoders.load(str(path), **({"encoder_kwargs": kwargs} if kwargs else {}))
    if any(sep in args.encoder for sep in ("/", "\\")) and ":" not in args.encoder:
        raise FileNotFoundError(f"--encoder {args.encoder!r}: no such checkpoint file")
    with seeded_init(args.seed):
        return encoders.create(args.encoder, **kwargs)


def _first(n: int | None, size: int, flag: str) -> list[int] | None:
    if n is None:
        return None
    if n < 1:
        raise ValueError(f"{flag} must be >= 1, got {n}")
    return list(range(min(n, size)))


def run(args: argparse.Namespace) -> int:
    from robustssl import data
    from robustssl.finetune import evaluate, evaluate_under_attack, finetune, save_task_model
    from robustssl.finetune.adversarial import TARGET_KEYS
    from robustssl.runtime import deterministic_mode, make_generator, resolve_device

    options = _options(args)
    attack_kwargs = _eval_attack(args)
    eval_eps = args.eval_eps if args.eval_eps is not None else options.get("eps", 8 / 255)
    device = resolve_device(args.device)
    data_args = key_values(args.data_arg, "--data-arg")
    splits = data.DATASETS.meta(args.data).get("splits") or ()
    key = TARGET_KEYS[args.task]

    def load(split: str) -> Any:
        ds = data.load(args.data, root=args.root, split=split, **data_args)
        ds.require(key, purpose=f"a {args.task} model")
        return ds

    train = load("train")
    val = load("val") if "val" in splits else None
    test = load(args.eval_split)
    options["train_indices"] = _first(args.n_train, len(train), "--n-train")
    if val is not None:
        options["val_indices"] = _first(args.n_val, len(val), "--n-val")
    else:
        if args.n_val is not None:
            raise ValueError(f"dataset {args.data!r} has no val split; --n-val does not apply (use "
                             "--val-fraction)")
        options["val_fraction"] = args.val_fraction
    options = {k: v for k, v in options.items() if v is not None}
    test_indices = _first(args.n_test, len(test), "--n-test")
    encoder = _load_encoder(args)

    with deterministic_mode(args.deterministic):
        result = finetune(encoder, train, val, task=args.task, protocol=args.protocol, seed=args.seed,
                          device=device, precision=args.precision, **options)
        model = result.model
        batch = result.info["batch_size"]
        clean = evaluate(model, test, batch_size=batch, device=device, precision=args.precision,
                         indices=test_indices)
        robust = None
        if attack_kwargs is not None:
            robust = evaluate_under_attack(
                model, test, attack=args.eval_attack, eps=eval_eps, norm=options.get("norm", "linf"),
                attack_kwargs=attack_kwargs, batch_size=batch, device=device, precision=args.precision,
                indices=test_indices, generator=make_generator(args.seed, device))
    test_record: dict[str, Any] = {"split": args.eval_split, "clean": clean}
    if robust is not None:
        test_record.update(attack=args.eval_attack, attack_args=attack_kwargs, eps=eval_eps,
                           norm=options.get("norm", "linf"),
                           robust=robust["robust"], attack_fwd=robust["fwd"], attack_bwd=robust["bwd"])
    info = {**result.info, "encoder": args.encoder, "data": args.data, "data_args": data_args,
            "test": test_record}
    path = save_task_model(model, args.out, info=info)
    _print(args, result.info, test_record, path)
    return 0


def _print(args: argparse.Namespace, info: dict[str, Any], test: dict[str, Any], path: Path) -> None:
    if args.json:
        print(json.dumps({"model": str(path), "finetune": info, "test": test}, default=float))
        return
    chosen = {k: info[k] for k in ("lr", "weight_decay", "best_epoch", "loss", "beta") if k in info}
    print(f"{args.protocol} on {args.task} ({args.data}): selected {chosen} by val {info['val_metric']} = "
          f"{info['val_score']:.4f}; {info['seconds']:.1f}s, fwd {info['fwd']}, bwd {info['bwd']}")
    metric = HEADLINE[args.task]
    line = f"test ({test['split']}, n={test['clean']['n']}): clean {metric} {test['clean'][metric]:.4f}"
    if "robust" in test:
        eps = f"{test['eps'] * 255:.3g}/255" if test["norm"] == "linf" else f"{test['eps']:.4g}"
        line += f", {test['attack']} {test['norm']} eps {eps}: robust {metric} {test['robust'][metric]:.4f}"
    print(line)
    print(f"saved {path.parent} (load with robustssl.finetune.load_task_model)")
