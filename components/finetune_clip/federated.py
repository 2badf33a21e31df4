"""Federated LoRA across a client's sites with Flower: only adapter weights travel (``finetune_clip.federated``).

Each site runs a Flower ``ClientApp`` that loads the global LoRA adapter it is sent, trains it on its own videos
for ``local_epochs`` (the same optimizer and epoch as :func:`~components.finetune_clip.train.train_clip`) and
replies with the adapter's tensors (peft's adapter state dict: names and shapes fixed by the LoRA settings) and
its number of training videos, nothing else: no frames, no embeddings, no video ids. The ``ServerApp`` runs
Flower's ``FedAvg`` (weighted by ``num-examples``), optionally inside Flower's
``DifferentialPrivacyServerSideFixedClipping`` (update clipping, plus Gaussian noise when ``noise_multiplier``
is set), and refuses a reply that holds anything beyond the adapter and the count (:func:`check_reply`). After
each round the server scores the global adapter on the window's validation videos; the best round's adapter is
the result, exported and registered by the stage like any finetune_clip model.

No secure aggregation: Flower 1.42 offers SecAgg+ only for its legacy ``NumPyClient`` workflow, not for the
``serverapp.strategy`` API used here, and with it the server could neither check nor clip each site's reply.

Runtime: Flower's simulation runtime (Ray, in-process ``ServerApp`` thread, ClientApps in Ray actors, Flower's
own message passing between them). In the embedded default every site's videos are on this machine; at real
sites each would run a SuperNode with the same ``ClientApp``, which is not built here.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common.no_challenger import NotTrainable
from components.finetune_clip.config import FinetuneClipConfig
from components.finetune_clip.data import ClipSample
from components.finetune_clip.train import LogFn, TrainResult

if TYPE_CHECKING:
    from components.finetune_clip.model import ClipBundle

logger = logging.getLogger("clipsync.finetune_clip")

ADAPTER_KEY = "adapter"  # the ArrayRecord of a message: the LoRA adapter's tensors
METRICS_KEY = "metrics"  # the MetricRecord of a reply: only EXAMPLES
EXAMPLES = "num-examples"  # FedAvg's weight: the site's training videos

#: Called with (round, the reply's RecordDict) for every reply the server receives, before aggregation.
ReplyHook = Callable[[int, Any], None]


class FederationError(RuntimeError):
    """A site failed or sent something other than its adapter and example count."""


def _quiet_flower() -> None:
    # Flower reads this at import: without it every simulation ends with a telemetry POST to flower.ai (and a
    # 4 s wait when, as in a cluster without egress, nothing answers).
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def adapter_state(model: Any) -> dict[str, Any]:
    """The LoRA adapter's tensors of a ``PeftModel`` (peft's names, on the CPU): all a site sends."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state(model: Any, state: Mapping[str, Any]) -> None:
    """Set a ``PeftModel``'s adapter to ``state`` (names of :func:`adapter_state`); every tensor must fit."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, dict(state))
    if result.unexpected_keys:
        raise FederationError(f"adapter does not fit the model (e.g. {sorted(result.unexpected_keys)[:3]})")


def check_reply(content: Any, expected: Mapping[str, tuple[int, ...]]) -> int:
    """What a site may send: its adapter (exactly ``expected``'s names and shapes) and its example count.

    Args:
        content: The reply's ``RecordDict``.
        expected: Adapter tensor name -> shape.

    Returns:
        The example count.

    Raises:
        FederationError: Any other record, array, shape or metric, or a count that is not a positive integer.
    """
    if set(content.keys()) != {ADAPTER_KEY, METRICS_KEY} or content.config_records:
        raise FederationError(f"a reply must hold only {ADAPTER_KEY!r} and {METRICS_KEY!r}, got {sorted(content)}")
    arrays, metrics = content.array_records.get(ADAPTER_KEY), content.metric_records.get(METRICS_KEY)
    if arrays is None or metrics is None:
        raise FederationError(f"{ADAPTER_KEY!r} must be arrays and {METRICS_KEY!r} metrics")
    got = {name: tuple(arr.shape) for name, arr in arrays.items()}
    if got != dict(expected):
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        raise FederationError(f"reply is not the adapter: extra {extra[:3]}, missing {missing[:3]}, or other shapes")
    n = metrics.get(EXAMPLES)
    if set(metrics.keys()) != {EXAMPLES} or not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise FederationError(f"a site's metrics must be only {EXAMPLES!r} (a positive count), got {dict(metrics)}")
    return n


# One base model per simulated site process (a Ray actor trains several sites in turn).
_SITE_BUNDLES: dict[tuple, ClipBundle] = {}


def _site_bundle(base_ref: str, cache_dir: str | None, cfg: FinetuneClipConfig) -> ClipBundle:
    from components.finetune_clip.model import apply_strategy, load_base_clip

    key = (base_ref, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)
    if key not in _SITE_BUNDLES:
        bundle = load_base_clip(base_ref, cache_dir)
        bundle.model, _ = apply_strategy(bundle.model, cfg)
        _SITE_BUNDLES[key] = bundle
    return _SITE_BUNDLES[key]


def train_site(
    bundle: ClipBundle, samples: Sequence[ClipSample], cfg: FinetuneClipConfig, adapter: Mapping, server_round: int
) -> dict[str, Any]:
    """One site's round: ``local_epochs`` from the global ``adapter`` on its own videos (a fresh AdamW each round).

    Returns:
        The site's adapter after the round (:func:`adapter_state`).
    """
    from components.common.cpus import set_torch_threads
    from components.common.device import resolve_runtime
    from components.finetune_clip.train import make_optimizer, train_one_epoch

    set_torch_threads(cfg.num_threads)
    runtime = resolve_runtime(cfg.device, cfg.precision)
    model = bundle.model.to(runtime.device)
    load_adapter_state(model, adapter)
    local = replace(cfg, epochs=cfg.federated.local_epochs)
    optim = make_optimizer(model, local, len(samples), runtime)
    for e in range(local.epochs):
        train_one_epoch(model, bundle, samples, local, (server_round - 1) * local.epochs + e, optim, runtime)
    return adapter_state(model)


def _client_app(base_ref: str, cache_dir: str | None, sites: list[list[ClipSample]], cfg: FinetuneClipConfig) -> Any:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        samples = sites[int(context.node_config["partition-id"])]
        server_round = int(msg.content.config_records["config"]["server-round"])
        adapter = msg.content.array_records[ADAPTER_KEY].to_torch_state_dict()
        trained = train_site(_site_bundle(base_ref, cache_dir, cfg), samples, cfg, adapter, server_round)
        reply = RecordDict({ADAPTER_KEY: ArrayRecord(trained), METRICS_KEY: MetricRecord({EXAMPLES: len(samples)})})
        return Message(reply, reply_to=msg)

    return app


def _strategy(cfg: FinetuneClipConfig, n_sites: int, expected: dict, on_reply: ReplyHook | None) -> Any:
    """FedAvg over all sites (in Flower's clipping wrapper when ``clip_norm`` is set) behind the reply check."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy

    fed = cfg.federated
    inner = FedAvg(
        fraction_evaluate=0.0,
        min_train_nodes=n_sites,
        min_available_nodes=n_sites,
        weighted_by_key=EXAMPLES,
        arrayrecord_key=ADAPTER_KEY,
    )
    if fed.clip_norm > 0:
        inner = DifferentialPrivacyServerSideFixedClipping(inner, fed.noise_multiplier, fed.clip_norm, n_sites)

    class CheckedReplies(Strategy):
        """Checks (and shows ``on_reply``) every site's reply before the wrapped strategy aggregates it."""

        def configure_train(self, server_round, arrays, config, grid):
            return inner.configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            for reply in replies:
                if reply.has_error():
                    raise FederationError(f"round {server_round}: a site failed: {reply.error.reason}")
                check_reply(reply.content, expected)
                if on_reply is not None:
                    on_reply(server_round, reply.content)
            if len(replies) < n_sites:
                raise FederationError(f"round {server_round}: {len(replies)} of {n_sites} sites replied")
            # Replies arrive in completion order; a fixed order makes the float sums, and so a rerun, the same.
            replies.sort(key=lambda r: [a.data for a in r.content[ADAPTER_KEY].values()])
            return inner.aggregate_train(server_round, replies)

        def configure_evaluate(self, server_round, arrays, config, grid):
            return inner.configure_evaluate(server_round, arrays, config, grid)

        def aggregate_evaluate(self, server_round, replies):
            return inner.aggregate_evaluate(server_round, replies)

        def summary(self) -> None:
            inner.summary()

    return CheckedReplies()


def site_samples(
    samples: Sequence[ClipSample], frames_dir: Path, videos_prefix: str, sites: Sequence[str]
) -> dict[str, list[ClipSample]]:
    """Each site's training videos: those whose upload lies in ``{videos_prefix}{site}/`` (the frames index's key).

    A video outside every site's folder (a remembered one from an earlier month included) is not trained on;
    their number is logged.
    """
    from components.frame_extraction.dataset import read_frame_index

    keys = {rec.video_id: rec.key for rec in read_frame_index(frames_dir)}
    out: dict[str, list[ClipSample]] = {site: [] for site in sites}
    outside = 0
    for sample in samples:
        key = keys.get(sample.video_id, "")
        rest = key[len(videos_prefix) :] if key.startswith(videos_prefix) else ""
        site = rest.split("/", 1)[0] if "/" in rest else ""
        if site in out:
            out[site].append(sample)
        else:
            outside += 1
    if outside:
        logger.warning("federated: %d training videos lie in no site's folder of %s: not trained on", outside, sites)
    return out


def train_federated(
    bundle: ClipBundle,
    cache_dir: str | Path | None,
    sites: Mapping[str, Sequence[ClipSample]],
    val_samples: Sequence[ClipSample],
    cfg: FinetuneClipConfig,
    log_fn: LogFn | None = None,
    init_adapter: Path | None = None,
    on_reply: ReplyHook | None = None,
) -> TrainResult:
    """Train the LoRA adapter with Flower across ``sites``, each on its own videos; return the best round's model.

    Args:
        bundle: The base CLIP (modified in place: ``bundle.model`` becomes the server's model); each site loads
            ``bundle.base_ref`` itself.
        cache_dir: Model cache of the base (hub downloads, ``s3://`` copies), for the sites.
        sites: Site name -> its training videos. A site with fewer than 2 is left out (logged).
        val_samples: The server's validation videos: the global adapter is scored on them after every round and
            the round with the lowest validation loss wins (none: the last round).
        cfg: Stage settings (``strategy`` lora, ``federated`` enabled).
        log_fn: Called with each round's validation metrics and the round (1-based), after the last round.
        init_adapter: An adapter (``adapter_model.safetensors``) to start from instead of a fresh one.
        on_reply: Shown every reply the server receives, after :func:`check_reply` accepted it.

    Returns:
        The result, ``best_epoch`` / ``epochs_run`` counting rounds; ``result.model`` holds the best round's
        adapter, in eval mode.

    Raises:
        NotTrainable: Fewer than 2 sites with at least 2 training videos.
        FederationError: A site failed or sent more than its adapter and count.
    """
    import torch

    _quiet_flower()
    from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from components.common.cpus import set_torch_threads
    from components.common.device import resolve_runtime
    from components.finetune_clip.model import apply_strategy
    from components.finetune_clip.train import _validate

    fed = cfg.federated
    usable = {name: list(s) for name, s in sites.items() if len(s) >= 2}
    for name in sorted(set(sites) - set(usable)):
        logger.warning("federated: site %s has %d training videos (< 2): left out", name, len(sites[name]))
    if len(usable) < 2:
        raise NotTrainable(f"federated training needs 2 sites with >= 2 training videos, got {sorted(usable)}")
    names = sorted(usable)
    set_torch_threads(cfg.num_threads)
    runtime = resolve_runtime(cfg.device, cfg.precision)
    torch.manual_seed(cfg.seed)
    bundle.model, stats = apply_strategy(bundle.model, cfg)
    model = bundle.model.to(runtime.device)
    if init_adapter is not None:
        from safetensors.torch import load_file

        load_adapter_state(model, load_file(str(init_adapter)))
    initial = adapter_state(model)
    expected = {k: tuple(v.shape) for k, v in initial.items()}
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"round": fed.rounds, "val_loss": math.nan, "adapter": None}

    def evaluate(server_round: int, arrays: Any) -> Any:
        if server_round == 0:
            return None
        state = arrays.to_torch_state_dict()
        if not val_samples:  # no validation videos: the last round wins
            best.update(round=server_round, adapter=state)
            return None
        load_adapter_state(model, state)
        metrics = _validate(model, bundle, val_samples, cfg, runtime.autocast)
        history.append({"epoch": server_round, **metrics})
        if math.isnan(best["val_loss"]) or metrics["val_loss"] < best["val_loss"] - 1e-6:
            best.update(round=server_round, val_loss=metrics["val_loss"], adapter=state)
        logger.info("federated round %d: %s", server_round, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return MetricRecord(metrics)

    server = ServerApp()
    outcome: dict[str, Any] = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = _strategy(cfg, len(names), expected, on_reply)
        outcome["result"] = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial),
            num_rounds=fed.rounds,
            train_config=ConfigRecord({}),
            evaluate_fn=evaluate,
        )

    gpus = 1.0 if runtime.device.type == "cuda" else 0.0
    logger.info("federated: %d sites %s, %d rounds x %d local epochs", len(names), names, fed.rounds, fed.local_epochs)
    run_simulation(
        server_app=server,
        client_app=_client_app(bundle.base_ref, cache_dir and str(cache_dir), [usable[n] for n in names], cfg),
        num_supernodes=len(names),
        backend_config={
            # One actor trains the sites in turn: each holds a model, and the stage has its task's CPUs.
            "client_resources": {"num_cpus": 1, "num_gpus": gpus},
            "init_args": {"num_cpus": 1, "num_gpus": int(gpus), "object_store_memory": 256 * 2**20},
        },
    )
    if "result" not in outcome:
        raise FederationError("the Flower server ended without a result (see the log above)")
    if log_fn is not None:  # here, not in the server's thread: the MLflow run is the calling thread's
        for entry in history:
            log_fn({k: v for k, v in entry.items() if k != "epoch"}, int(entry["epoch"]))
    load_adapter_state(model, best["adapter"])
    model.eval()
    return TrainResult(
        model=model,
        stats=stats,
        history=history,
        best_epoch=int(best["round"]),
        best_val_loss=float(best["val_loss"]),
        epochs_run=fed.rounds,
        stopped_early=False,
        resumed_from_epoch=0,
        device=str(runtime.device),
        precision=runtime.precision,
    )
