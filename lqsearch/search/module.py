"""``TransformSearch``: block-by-block calibration with a Gumbel-softmax choice of transform per unit.

One ``trainer.fit`` covers every block: the epoch index maps to (block, phase) through
``BlockSchedule``. Per block:
1. inputs of the rank's samples are cached (embeddings for block 0, then the previous
   block's outputs: full precision with ``propagate: fp``, quantized with ``quant``);
   targets are the full-precision outputs of the unwrapped block, computed once;
2. the block is wrapped (``TransformedBlock``) and only it moves to the accelerator;
3. ``search`` epochs: each unit mixes its candidates with Gumbel-softmax weights over the
   architecture logits alpha (``soft``), or runs one sampled candidate with a
   straight-through gradient (``hard``); then the argmax per unit is kept;
4. ``finetune`` epochs: the chosen transforms alone;
5. the block is fused (float64), its weights rounded (RTN, or GPTQ on its cached inputs),
   and its learned state kept for the checkpoint.
A finished block survives in the Lightning checkpoint as its choice and learned state; a
resumed run rebuilds the caches by replaying finished blocks, identically.

Under DDP each rank caches only its shard of the samples. Gradients of everything a phase
trains (transforms, clipping, alpha) are averaged explicitly after each backward, and the
loss is normalised by the global MSE, so W ranks with batch b take the steps of one process
with batch W x b. The Gumbel noise is seeded per (block, step), so every rank mixes alike
and keeps the same argmax. Block losses are reduced over all samples.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import ParallelStrategy, Strategy
from torch import nn
from torchmetrics.text import Perplexity
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lqsearch.errors import ConfigError
from lqsearch.models.adapters import ModelAdapter
from lqsearch.models.loading import DTYPES, load_model
from lqsearch.models.quantized import use_kv_site_attention
from lqsearch.models.streaming import BlockStore, load_streamed
from lqsearch.policy.kurtosis import KurtosisWeights, robust_z, unit_kurtosis
from lqsearch.policy.rule import KurtosisPolicy, combination_key
from lqsearch.quant.config import FULL_PRECISION_BITS, QuantConfig
from lqsearch.search.gates import ArchitectureGates, TauSchedule, temperature
from lqsearch.search.schedule import BlockSchedule
from lqsearch.transforms.block import UNITS, TransformedBlock, check_candidates
from lqsearch.transforms.rounding import GPTQActivations, GPTQOptions, gptq_round_block
from lqsearch.transforms.transform import RotationMode

@dataclass
class SourceModel:
    """The Hugging Face model being quantized. Deliberately not an ``nn.Module`` attribute of the
    LightningModule: Lightning must neither move nor checkpoint its billions of weights; the
    search moves one block at a time and checkpoints only what it learned."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ModelAdapter


class TransformSearch(L.LightningModule):
    """Calibrates transforms block by block, choosing the transform type of each unit.

    Args:
        model: embedded name (``smollm2-135m``), local folder, ``.gguf`` file or hub id.
        quant: bit-widths, e.g. ``w4a4kv4``, ``w3a3k2v2``.
        candidates: transform kinds to choose from (``affine``, ``rotation``, ``identity``);
            one kind = a fixed-type calibration (``affine`` is FlatQuant's recipe).
        rotation: ``hadamard`` (fixed) or ``learned`` rotation candidates.
        smoothing: per-channel SmoothQuant scales in the affine candidates.
        smoothing_alpha: SmoothQuant migration strength of their initialisation.
        learnable_clipping: learn weight (per row) and activation (per quantizer) clipping.
        search_epochs: epochs of the mixture per block (ignored with one candidate).
        finetune_epochs: epochs of the chosen transforms alone per block.
        mode: ``soft`` mixes every candidate's output; ``hard`` runs one sampled candidate.
        tau_start: Gumbel-softmax temperature at the start of each block's search.
        tau_end: temperature at its end (at most ``tau_start``).
        tau_schedule: ``exponential`` or ``linear`` annealing.
        decide: how the search's choice is made: ``loss`` (default), the combination of unit
            candidates with the lowest block loss once the search has trained them all, or
            ``alpha``, the argmax of the architecture weights (the paper). Short searches leave
            alpha close to a coin toss (benchmarks/results/quality-expectations.md).
        lr: AdamW learning rate of the transforms.
        clip_lr_scale: learning rate of the clipping logits, as a multiple of ``lr``.
        alpha_lr: learning rate of the architecture logits.
        weight_decay: AdamW weight decay of transforms and clipping (not of alpha).
        min_lr_ratio: the cosine schedule ends at ``min_lr_ratio * lr``.
        propagate: next block's inputs are the ``fp`` or the ``quant`` outputs of this block.
        cache_device: where cached block inputs and targets live (``cpu``, pinned on CUDA machines,
            saves accelerator memory; ``cuda`` saves the transfers). Per rank the cache holds
            ``2 x nsamples / ranks x seqlen x hidden_size x bytes(cache_dtype)``.
        cache_dtype: dtype of the cached activations (None: the model's); ``bfloat16`` halves a
            float32 cache.
        dtype: dtype the model is loaded in.
        stream_blocks: keep decoder blocks on the meta device and read each from the model's
            safetensors files when needed; ranks other than 0 free finished blocks, so they
            hold one block instead of the model (rank 0 keeps them for the export).
        symmetric_denominator: ``qmax`` or ``qmax+0.5`` (symmetric scale divisor).
        selection: ``search`` (Gumbel-softmax) or ``policy``: a kurtosis policy picks each unit's
            transform before calibration, and no search runs.
        policy_path: policy JSON for ``selection: policy`` (None: the shipped default).
        kurtosis_weights: ``input`` (q,k,v / gate,up) or ``all`` (with o / down) weights per unit;
            a policy brings its own.
        weight_rounding: ``rtn`` (round to nearest at inference) or ``gptq`` (after fusion, on the
            block's cached inputs; on the learned clipping grid).
        gptq_damp: GPTQ dampening, a fraction of the mean Hessian diagonal.
        gptq_block_size: GPTQ lazy-batch width in columns.
        gptq_act_order: GPTQ rounds columns by decreasing Hessian diagonal.
        gptq_activations: GPTQ inputs collected ``fp`` (activation and KV quantizers off: measured
            better on SmolLM2 W4A4KV4) or ``quantized``.
        seed: seed of the random rotations and the Gumbel noise.
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        quant: str = "w4a4kv4",
        candidates: list[str] | None = None,
        rotation: RotationMode = "hadamard",
        smoothing: bool = True,
        smoothing_alpha: float = 0.3,
        learnable_clipping: bool = True,
        search_epochs: int = 2,
        finetune_epochs: int = 1,
        mode: Literal["soft", "hard"] = "soft",
        tau_start: float = 1.0,
        tau_end: float = 0.1,
        tau_schedule: TauSchedule = "exponential",
        decide: Literal["loss", "alpha"] = "loss",
        lr: float = 5e-3,
        clip_lr_scale: float = 10.0,
        alpha_lr: float = 5e-2,
        weight_decay: float = 0.0,
        min_lr_ratio: float = 1e-3,
        propagate: Literal["fp", "quant"] = "fp",
        cache_device: str = "cpu",
        cache_dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        stream_blocks: bool = False,
        symmetric_denominator: Literal["qmax", "qmax+0.5"] = "qmax",
        selection: Literal["search", "policy"] = "search",
        policy_path: str | None = None,
        kurtosis_weights: KurtosisWeights = "input",
        weight_rounding: Literal["rtn", "gptq"] = "rtn",
        gptq_damp: float = 0.01,
        gptq_block_size: int = 128,
        gptq_act_order: bool = False,
        gptq_activations: GPTQActivations = "fp",
        seed: int = 0,
    ) -> None:
        super().__init__()
        candidates = ["affine", "rotation"] if candidates is None else candidates
        self.candidates = check_candidates(candidates)
        self.quant = QuantConfig.parse(quant, symmetric_denominator=symmetric_denominator)
        if not 0 < tau_end <= tau_start:
            raise ConfigError(f"need 0 < tau_end <= tau_start, got tau_start={tau_start}, tau_end={tau_end}")
        if search_epochs < 0 or finetune_epochs < 0:
            raise ConfigError(f"epochs cannot be negative: search_epochs={search_epochs}, finetune_epochs={finetune_epochs}")
        for name, value in (("lr", lr), ("alpha_lr", alpha_lr), ("clip_lr_scale", clip_lr_scale)):
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if weight_rounding == "gptq" and self.quant.w_bits >= FULL_PRECISION_BITS:
            raise ConfigError(f"weight_rounding gptq needs quantized weights, but quant {self.quant.spec!r} keeps them in full precision")
        self.gptq = GPTQOptions(gptq_damp, gptq_block_size, gptq_act_order, gptq_activations) if weight_rounding == "gptq" else None
        self.save_hyperparameters()
        self.automatic_optimization = False
        policy = None
        if selection == "policy":
            policy = KurtosisPolicy.load(policy_path)
            policy.check_candidates(self.candidates)
            kurtosis_weights = policy.weights
        self.store: BlockStore | None = None
        if stream_blocks:
            model_, tokenizer, self.store = load_streamed(model, DTYPES[dtype])
        else:
            model_, tokenizer = load_model(model, DTYPES[dtype])
        model_.requires_grad_(False)
        self.source = SourceModel(model_, tokenizer, ModelAdapter(model_))
        self.kurtosis_weights: KurtosisWeights = kurtosis_weights
        loaded = self.store.loaded if self.store is not None else None
        self.kurtosis = unit_kurtosis(self.source.adapter, kurtosis_weights, loaded)  # of the original weights
        self.z = {unit: robust_z(values) for unit, values in self.kurtosis.items()}
        self.policy = policy
        self.policy_choices = policy.choose(self.z) if policy is not None else None
        use_kv_site_attention(model_)
        num_blocks = len(self.source.adapter.blocks)
        search = search_epochs if len(self.candidates) > 1 and policy is None else 0
        self.schedule = BlockSchedule(num_blocks, search, finetune_epochs)
        self.gates = ArchitectureGates(num_blocks, tuple(UNITS), self.candidates, seed)
        self.finished: list[dict[str, Any]] = []  # per finished block: choice, statistics, learned state
        self.blocks: dict[int, TransformedBlock] = {}
        self._inputs: dict[int, torch.Tensor] = {}
        self._targets: dict[int, torch.Tensor] = {}
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._mixing: dict[str, torch.Tensor] = {}
        self._candidate_loss: dict[str, float] = {}
        self._combination_loss: dict[str, float] = {}
        self._searched_choice: dict[str, str] | None = None
        self._tau = tau_start

    # ------------------------------------------------------------------ plumbing
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.source.tokenizer

    @property
    def num_blocks(self) -> int:
        return self.schedule.num_blocks

    def configure_optimizers(self) -> None:
        return None  # one AdamW per block and phase, built when the phase starts

    def configure_callbacks(self) -> list[Callback]:
        from lqsearch.callbacks.artifacts import SearchArtifacts

        # A checkpoint at the end of every block (`fit --ckpt_path last` resumes at the next one),
        # and the run's outputs: both follow the block schedule, so the module owns them.
        checkpoint = ModelCheckpoint(
            dirpath=f"{self.trainer.default_root_dir}/checkpoints",
            save_last=True,
            save_top_k=0,
            every_n_epochs=self.schedule.epochs_per_block,
            save_on_train_epoch_end=True,
        )
        return [checkpoint, SearchArtifacts()]

    def _block_kwargs(self, hidden_states: torch.Tensor) -> dict[str, Any]:
        return {"position_embeddings": self.source.adapter.position_embeddings(hidden_states)}

    def _run_block(self, block: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        out = block(hidden_states, **self._block_kwargs(hidden_states))
        return out[0] if isinstance(out, tuple) else out  # older transformers return a tuple

    def _to_cache(self, tensor: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        cached = tensor.to(hp.cache_device, DTYPES[hp.cache_dtype] if hp.cache_dtype else None)
        # Pinned host memory makes the copies back to the GPU asynchronous.
        return cached.pin_memory() if cached.device.type == "cpu" and self.device.type == "cuda" else cached

    def _stack(self, cache: dict[int, torch.Tensor], indices: list[int]) -> torch.Tensor:
        """Cached tensors of ``indices`` as one batch on the device, in the model's dtype."""
        batch = torch.stack([cache[i] for i in indices])
        return batch.to(self.device, self.source.model.dtype, non_blocking=batch.is_pinned())

    def _batches(self, cache: dict[int, torch.Tensor]):
        """Cached tensors in a fixed order and grouping, so replays compute identically."""
        indices = sorted(cache)
        size = self.trainer.train_dataloader.batch_size
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            yield chunk, self._stack(cache, chunk)

    @torch.no_grad()
    def _propagate(self, block: nn.Module, cache: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        block.to(self.device)
        outputs = {}
        for chunk, hidden in self._batches(cache):
            outputs.update(zip(chunk, self._to_cache(self._run_block(block, hidden))))
        return outputs

    @torch.no_grad()
    def _embed_rank_samples(self) -> dict[int, torch.Tensor]:
        cache = {}
        for batch in self.trainer.train_dataloader:
            hidden = self.source.adapter.embed(batch["input_ids"])
            cache.update(zip(batch["index"].tolist(), self._to_cache(hidden)))
        return cache

    def _wrap(self, index: int) -> TransformedBlock:
        hp = self.hparams
        block = TransformedBlock(
            self.source.adapter, index, self.quant, self.candidates, hp.rotation, hp.smoothing, hp.learnable_clipping, hp.seed
        )
        block.block.to(self.device)
        self.blocks[index] = block
        return block

    def _materialize(self, index: int) -> None:
        """Read block ``index`` from the model files if it is streamed and not in memory."""
        if self.store is not None and not self.store.is_loaded(index):
            self.store.load(index)

    def _release_if_not_kept(self, index: int) -> None:
        """A finished block is needed again only by rank 0 (export): other ranks free it when streaming."""
        if self.store is not None and not self.trainer.is_global_zero:
            self.store.release(index)
            del self.blocks[index]

    def _rebuild(self, record: dict[str, Any]) -> TransformedBlock:
        """A finished block from its record: wrapped, learned state loaded, choice selected, fused
        and its weights rounded (GPTQ again on the replayed inputs: deterministic, and it keeps
        checkpoints free of weights)."""
        self._materialize(record["block"])
        block = self._wrap(record["block"])
        block.load_trainable_state(record["state"])
        block.select(record["choice"])
        self._fuse_and_round(block)
        return block

    def _fuse_and_round(self, block: TransformedBlock) -> None:
        block.fuse()
        if self.gptq is not None:
            def run_calibration() -> None:
                for _, hidden in self._batches(self._inputs):
                    self._run_block(block.block, hidden)

            merge_sum = lambda tensor: self.trainer.strategy.reduce(tensor, reduce_op="sum")  # noqa: E731
            gptq_round_block(block, run_calibration, self.gptq, merge_sum)

    def _restore_finished(self) -> None:
        """Replay finished blocks (after a resume): the input cache of the next block, identically."""
        self._inputs = self._embed_rank_samples()
        for record in self.finished:
            self._materialize(record["block"])
            fp_block = self.source.adapter.blocks[record["block"]]
            fp_outputs = self._propagate(fp_block, self._inputs) if self.hparams.propagate == "fp" else None
            block = self._rebuild(record)
            self._inputs = fp_outputs if fp_outputs is not None else self._propagate(block.block, self._inputs)
            block.block.to("cpu")
            self._release_if_not_kept(record["block"])

    def quantized_model(self) -> PreTrainedModel:
        """The model with every finished block quantized and fused (the rest in full precision)."""
        missing = [record for record in self.finished if record["block"] not in self.blocks]
        if missing and self.gptq is not None:
            raise ConfigError("GPTQ weights are rounded on calibration inputs during fit: score the export instead (lqsearch eval --checkpoint <run>/quantized)")
        for record in missing:
            self._rebuild(record).block.to("cpu")
        for index in range(self.num_blocks):  # streamed blocks not calibrated yet stay in full precision
            self._materialize(index)
        return self.source.model

    @property
    def cache_bytes(self) -> int:
        """Bytes this rank's activation cache holds now (block inputs and targets)."""
        return sum(t.nbytes for cache in (self._inputs, self._targets) for t in cache.values())

    def expected_cache_bytes(self, nsamples: int, seqlen: int) -> int:
        """The cache formula per rank: inputs and targets of its share of the samples,
        ``2 x nsamples / ranks x seqlen x hidden_size x bytes``."""
        dtype = DTYPES[self.hparams.cache_dtype] if self.hparams.cache_dtype else self.source.model.dtype
        per_rank = nsamples // self.trainer.world_size
        return 2 * per_rank * seqlen * self.source.adapter.hidden_size * dtype.itemsize

    # ------------------------------------------------------------------ phases
    @property
    def calibration_seconds(self) -> float:
        """Wall time of the finished blocks (caching, search, fine-tuning, fusion), across resumes."""
        return sum(record["seconds"] for record in self.finished)

    def _start_block(self, index: int) -> None:
        self._block_started = time.perf_counter()
        if not self._inputs:
            self._restore_finished()
        self._materialize(index)
        self._targets = self._propagate(self.source.adapter.blocks[index], self._inputs)  # before wrapping: exact FP
        block = self._wrap(index)
        if self.policy_choices is not None:
            block.select(self.policy_choices[index])
        if self.hparams.smoothing and "affine" in self.candidates:
            sample = next(iter(self._inputs.values()))[None].to(self.device)
            batches = (hidden for _, hidden in self._batches(self._inputs))
            merge_max = lambda absmax: self.trainer.strategy.reduce(absmax, reduce_op="max")  # noqa: E731
            block.init_smoothing(batches, self.hparams.smoothing_alpha, merge_max, **self._block_kwargs(sample))

    def _start_phase(self, phase: str, epochs: int) -> None:
        block = self.blocks[self.current_block]
        hp = self.hparams
        transforms, clipping = block.parameter_groups(only_active=phase == "finetune")
        groups = [
            {"params": transforms, "lr": hp.lr, "weight_decay": hp.weight_decay},
            {"params": clipping, "lr": hp.lr * hp.clip_lr_scale, "weight_decay": hp.weight_decay},
        ]
        if phase == "search":
            groups.append({"params": [self.gates.alpha], "lr": hp.alpha_lr, "weight_decay": 0.0})
            for unit in UNITS:
                block.mix(unit, lambda unit=unit: self._mixing[unit])
        groups = [g for g in groups if g["params"]]
        self._optimizer = torch.optim.AdamW(groups) if groups else None
        self._scheduler = None
        if self._optimizer is not None:
            steps = max(epochs * self.trainer.num_training_batches, 1)

            def cosine(step: int) -> float:  # from 1 to min_lr_ratio, as a factor of each group's lr
                return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))

            self._scheduler = torch.optim.lr_scheduler.LambdaLR(self._optimizer, cosine)

    @torch.no_grad()
    def _block_loss(self, block: TransformedBlock) -> float:
        """MSE of the block's output against the FP targets over every rank's samples."""
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # squared error, elements
        for chunk, hidden in self._batches(self._inputs):
            out = self._run_block(block.block, hidden)
            total[0] += F.mse_loss(out.float(), self._stack(self._targets, chunk).float(), reduction="sum")
            total[1] += out.numel()
        total = self.trainer.strategy.reduce(total, reduce_op="sum")
        return (total[0] / total[1]).item()

    def _end_search(self) -> None:
        block = self.blocks[self.current_block]
        for unit in UNITS:
            block.mix(unit, None)
        by_loss = self.hparams.decide == "loss"
        losses = {}  # per combination of unit candidates; each type alone always (how much the choice matters)
        for kinds in itertools.product(self.candidates, repeat=len(UNITS)):
            if by_loss or len(set(kinds)) == 1:
                block.select(dict(zip(UNITS, kinds)))
                losses[kinds] = self._block_loss(block)
        self._candidate_loss = {kinds[0]: loss for kinds, loss in losses.items() if len(set(kinds)) == 1}
        self._combination_loss = {combination_key(dict(zip(UNITS, kinds))): loss for kinds, loss in losses.items()} if by_loss else {}
        self._searched_choice = dict(zip(UNITS, min(losses, key=losses.get))) if by_loss else self.gates.argmax(self.current_block)
        block.select(self._searched_choice)

    def _finish_block(self) -> None:
        index = self.current_block
        block = self.blocks[index]
        if self.policy_choices is not None:
            choice = self.policy_choices[index]
        elif len(self.candidates) > 1:
            choice = self._searched_choice or self.gates.argmax(index)  # no search epochs: alpha's init
        else:
            choice = {unit: self.candidates[0] for unit in UNITS}
        block.select(choice)
        record = {
            "block": index,
            "choice": choice,
            "pi": {u: dict(zip(self.candidates, p.tolist())) for u, p in self.gates.probabilities(index).items()},
            "candidate_loss": dict(self._candidate_loss),
            "combination_loss": dict(self._combination_loss),
            "kurtosis": {unit: self.kurtosis[unit][index] for unit in UNITS},
            "z": {unit: self.z[unit][index] for unit in UNITS},
            "state": {k: v.cpu() for k, v in block.trainable_state().items()},
        }
        self._fuse_and_round(block)
        record["final_loss"] = final_loss = self._block_loss(block)  # of the block as exported
        self.log(f"final_loss/block_{index:02d}", final_loss)
        # Never more than two activation sets at once: targets are dropped before propagating.
        targets, self._targets = self._targets, {}
        self._inputs = targets if self.hparams.propagate == "fp" else self._propagate(block.block, self._inputs)
        block.block.to("cpu")
        self._release_if_not_kept(index)
        record["seconds"] = time.perf_counter() - self._block_started
        self.finished.append(record)
        self._candidate_loss, self._combination_loss, self._searched_choice = {}, {}, None
        if index == self.num_blocks - 1:
            self.trainer.should_stop = True

    # ------------------------------------------------------------------ hooks
    @property
    def current_block(self) -> int:
        return self.schedule.block(self.current_epoch)

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        if self.schedule.block(epoch) >= self.num_blocks:
            raise RuntimeError(f"epoch {epoch} is past the last block: every block is calibrated")
        if self.schedule.starts_block(epoch):
            self._start_block(self.current_block)
        phase, within, epochs = self.schedule.phase(epoch)
        if within == 0 and phase != "none":
            self._start_phase(phase, epochs)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        phase, within, epochs = self.schedule.phase(self.current_epoch)
        if phase == "none" or self._optimizer is None:
            return None
        index, hp = self.current_block, self.hparams
        if phase == "search":
            steps = epochs * self.trainer.num_training_batches
            step = within * self.trainer.num_training_batches + batch_idx
            self._tau = temperature(step / max(steps - 1, 1), hp.tau_start, hp.tau_end, hp.tau_schedule)
            self._mixing = self.gates.sample(index, step, self._tau, hard=hp.mode == "hard")
        indices = batch["index"].tolist()
        output = self._run_block(self.blocks[index].block, self._stack(self._inputs, indices))
        mse = F.mse_loss(output.float(), self._stack(self._targets, indices).float())
        global_mse = self.trainer.strategy.reduce(mse.detach().clone(), reduce_op="mean")
        self._optimizer.zero_grad(set_to_none=True)
        # DDP's own reducer only knows alpha and would wait for it in fine-tuning: gradients are
        # averaged below instead, over exactly the parameters this phase trains.
        with _backward_sync_off(self.trainer.strategy):
            self.manual_backward(mse / global_mse)  # normalised by the loss's value (FlatQuant)
        self._average_gradients()
        self._optimizer.step()
        self._scheduler.step()
        self.log("loss", global_mse, prog_bar=True)
        self.log(f"loss/block_{index:02d}", global_mse)
        if phase == "search":
            self.log("tau", self._tau)
            for unit, probs in self.gates.probabilities(index).items():
                for candidate, p in zip(self.candidates, probs.tolist()):
                    self.log(f"pi/block_{index:02d}/{unit}/{candidate}", p)
        return mse

    def _average_gradients(self) -> None:
        """Average the gradients of the optimised parameters over the ranks, as one flat tensor."""
        if self.trainer.world_size == 1:
            return
        # Every rank runs the same candidates (same noise), so the same parameters have gradients.
        params = [p for group in self._optimizer.param_groups for p in group["params"] if p.grad is not None]
        flat = self.trainer.strategy.reduce(torch.cat([p.grad.reshape(-1) for p in params]), reduce_op="mean")
        for param, grad in zip(params, flat.split([p.numel() for p in params])):
            param.grad.copy_(grad.view_as(param))

    def on_train_epoch_end(self) -> None:
        if self.schedule.ends_search(self.current_epoch):
            self._end_search()
        if self.schedule.ends_block(self.current_epoch):
            self._finish_block()

    def export_manifest(self) -> dict[str, Any]:
        """What ``lqsearch.json`` records about this run (see ``lqsearch.models.export``)."""
        hp = self.hparams
        data = self.trainer.datamodule.hparams if self.trainer.datamodule is not None else {}
        policy = None if self.policy is None else {"path": hp.policy_path or "default", **self.policy.fitted_on}
        return {
            "source_model": hp.model,
            "quant": self.quant.spec,
            "symmetric_denominator": hp.symmetric_denominator,
            "learnable_clipping": hp.learnable_clipping,
            "candidates": list(self.candidates),
            "rotation": hp.rotation,
            "selection": hp.selection,
            "policy": policy,
            "weight_rounding": weight_rounding(self),
            "choices": [self.blocks[r["block"]].choice() for r in self.finished],
            "calibration": {key: data[key] for key in ("corpus", "nsamples", "seqlen", "seed") if key in data},
            "seed": hp.seed,
        }

    def on_validation_start(self) -> None:
        self.quantized_model().to(self.device)
        self._perplexity = Perplexity().to(self.device)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        logits = self.source.model(batch, use_cache=False).logits
        self._perplexity.update(logits[:, :-1].float(), batch[:, 1:])

    def on_validation_epoch_end(self) -> None:
        self.log("perplexity", self._perplexity.compute(), sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lqsearch_finished"] = self.finished

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        finished = checkpoint.get("lqsearch_finished")
        if finished is None:
            raise ConfigError("checkpoint has no lqsearch search state: resume from a checkpoint written by `lqsearch fit`")
        saved = checkpoint.get("hyper_parameters", {})
        for key in ("model", "quant", "candidates", "rotation"):
            if key in saved and saved[key] != self.hparams[key]:
                raise ConfigError(f"checkpoint was made with {key}={saved[key]!r}, this run has {self.hparams[key]!r}: resume with the same settings")
        if len(finished) > self.num_blocks:
            raise ConfigError(f"checkpoint has {len(finished)} finished blocks but the model has {self.num_blocks}: it comes from another model")
        self.finished = finished
        self._inputs = {}


def _backward_sync_off(strategy: Strategy) -> AbstractContextManager:
    """DDP's automatic gradient reduction switched off (nothing to switch off on one device)."""
    return strategy.block_backward_sync() if isinstance(strategy, ParallelStrategy) else nullcontext()


def weight_rounding(module: TransformSearch) -> dict[str, Any]:
    """How the weights were rounded, for ``choices.json`` and the export manifest."""
    if module.gptq is None:
        return {"method": "rtn"}
    return {"method": "gptq", **dataclasses.asdict(module.gptq)}


def finished_choices(module: TransformSearch) -> dict[str, Any]:
    """The ``choices.json`` document: run settings and, per finished block and unit, the choice made."""
    return {
        "model": module.hparams.model,
        "quant": module.quant.spec,
        "candidates": list(module.candidates),
        "mode": module.hparams.mode,
        "decide": module.hparams.decide,
        "selection": module.hparams.selection,
        "kurtosis_weights": module.kurtosis_weights,
        "weight_rounding": weight_rounding(module),
        "calibration_seconds": module.calibration_seconds,
        "blocks": [
            {
                "block": r["block"],
                "seconds": r["seconds"],
                "final_loss": r["final_loss"],
                "candidate_loss": r["candidate_loss"],  # each type alone in both units
                "combination_loss": r["combination_loss"],  # decide=loss: every "attn=..,mlp=.." combination
                "units": {
                    unit: {"choice": r["choice"][unit], "pi": r["pi"][unit], "kurtosis": r["kurtosis"][unit], "z": r["z"][unit]}
                    for unit in UNITS
                },
            }
            for r in module.finished
        ],
    }


__all__ = ["TransformSearch", "SourceModel", "finished_choices"]
