"""The training loop shared by pretraining and SFT: AdamW + schedule, accumulation, clipping, bf16 autocast,
DDP/FSDP2 under torchrun, evaluation (loss + bits per byte + samples), metrics, checkpoints and exact resume.

    from scalelab.lm.train.loop import TrainConfig, train
    summary = train(TrainConfig(run="runs/demo", model="micro", max_steps=500))          # pretraining
    summary = train(TrainConfig(run="runs/demo", stage="chat", init_from="base"), source=my_sft_source)  # SFT

``source`` follows lm.data.loader.BatchSource (``next_batch(step, micro_step) -> (x, y)``, y == -1 where masked;
``val_batches()``; ``state_dict()``); without one, the run's token shards are used. The loss of a step is the sum of
per-token losses over the whole global batch divided by its number of unmasked targets (all ranks and micro-steps),
so masked SFT batches weigh tokens equally and an all-masked batch gives a zero gradient, never NaN.

Time budget (``--time-budget MIN``): preflight's timed steps give a first plan; then at every log step the
planned total is re-fitted to the wall time left and the measured seconds per step (training time per step: the
median of the last 3 log windows; plus evaluation/checkpoint time amortised over the steps so far; the latest
evaluation + save is reserved for the end), until the LR decay starts; from then on the total is frozen so the decay
always completes. ``--schedule auto`` (default) is wsd under a budget: re-planning only moves the end of the constant
phase (cosine re-planning re-stretches the curve). The planned total is saved in trainer_state and a resumed run
continues from it. A run found late starts its decay at once; a run past 1.5x its budget stops (then without
completing its decay: a safety stop for a machine that became much slower). Under torchrun rank 0's plan is
broadcast.

Command line: ``scalelab pretrain --run runs/demo --model micro --time-budget 5`` (scalelab/cli/pretrain.py);
under torchrun the same command runs DDP (``--parallel ddp``, default) or FSDP2 (``--parallel fsdp``).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from scalelab.common import (
    UsageError,
    append_jsonl,
    destroy_distributed,
    init_distributed,
    print0,
    progress,
    resolve_device,
    resolve_dtype,
    seed_everything,
    torch_dtype,
)
from scalelab.config import save_config, to_dict
from scalelab.lm import checkpoint as ckpt
from scalelab.lm.data.loader import BatchSource, load_meta, load_token_bytes, token_source
from scalelab.lm.model import GPT, ModelConfig
from scalelab.lm.train import preflight
from scalelab.lm.train.config import TrainConfig, _validate, merge_saved_config, model_config  # noqa: F401
from scalelab.lm.train.log import plot_loss, sample_completions, truncate_metrics
from scalelab.lm.train.optim import build_optimizer, lr_at, peak_tflops, replan_total, resolve_schedule
from scalelab.runs import RunDir


class LossSum(nn.Module):
    """Sum of token cross-entropies (targets == -1 ignored), so the trainer can normalise over the global batch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(x)  # (B, T, V) fp32
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1, reduction="sum")


class _StopFlag:
    """First SIGINT/SIGTERM asks the loop to save and stop at the next step boundary; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _StopFlag:
        with contextlib.suppress(ValueError):  # not the main thread: no handlers, the loop still runs
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _dist_sum(t: torch.Tensor, enabled: bool) -> torch.Tensor:
    if enabled:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def eval_sums(logits: torch.Tensor, y: torch.Tensor, token_bytes: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """(sum of nats, number of targets, sum of nats over byte-carrying targets, their bytes) for one batch.

    Targets == -1 are ignored; special tokens (0 bytes) are left out of both byte sums, so
    bits per byte = nats_b / ln 2 / bytes does not depend on the tokenizer.
    """
    y = y.reshape(-1)
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y, ignore_index=-1, reduction="none").double()
    valid = y != -1
    zero = torch.zeros((), dtype=torch.float64, device=logits.device)
    if token_bytes is None:
        return loss[valid].sum(), valid.sum().double(), zero, zero
    b = token_bytes.to(y.device)[y.clamp(min=0)] * valid
    return loss[valid].sum(), valid.sum().double(), loss[b > 0].sum(), b.sum().double()


def train(cfg: TrainConfig, source: BatchSource | None = None) -> dict[str, Any]:
    """Train (or resume) ``cfg.stage`` of ``cfg.run``; returns a summary dict (steps, losses, bpb, tokens/s)."""
    _validate(cfg)
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    try:
        return _Trainer(cfg, device, info, source).fit()
    finally:
        destroy_distributed()


class _Trainer:
    def __init__(self, cfg: TrainConfig, device: str, info, source: BatchSource | None) -> None:
        self.cfg, self.device, self.info = cfg, device, info
        self.run = RunDir(cfg.run)
        self.dtype = resolve_dtype(cfg.dtype, device)
        self.dev_type = device.split(":")[0]
        self.world, self.dist = info.world_size, info.enabled
        self.fsdp = cfg.parallel == "fsdp" and self.dist
        if device.startswith("cuda") and self.dist:
            self.device = device = f"cuda:{info.local_rank}"
        self._setup_backend()
        self.data_meta = load_meta(self.run) if (source is None or self.run.data_meta.is_file()) else None
        self.found = self.run.latest_step_dir(cfg.stage)
        if cfg.resume and self.found is None:
            raise UsageError(f"{self.run.stage_dir(cfg.stage)}: --resume given but there is no checkpoint to resume")
        self.model = self._build_model()
        self.mcfg = self.model.config
        # batch geometry
        per_step = cfg.batch_size * cfg.seq_len * self.world
        total = cfg.total_batch_tokens or per_step
        if total % per_step:
            raise UsageError(f"--total-batch-tokens {total} must be a multiple of batch-size * seq-len * processes "
                             f"= {cfg.batch_size} * {cfg.seq_len} * {self.world} = {per_step}")
        self.accum = total // per_step
        self.tokens_per_step = total
        self.source = source if source is not None else token_source(
            self.run, cfg.seq_len, cfg.batch_size, self.accum, info.rank, self.world, cfg.seed, cfg.eval_tokens,
            self.data_meta)
        vocab = self.mcfg.vocab_size
        self.token_bytes = load_token_bytes(self.run, vocab) if self.data_meta is not None else None
        self.flops_per_token = self.model.flops_per_token(cfg.seq_len)
        self.num_params = self.model.num_params()
        self.peak = cfg.peak_tflops or peak_tflops(device, self.dtype)

    # ------------------------------------------------------------------------------------------------ setup
    def _setup_backend(self) -> None:
        if self.device == "cpu":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            torch.set_num_threads(self.cfg.num_threads or max(1, cores // max(1, local)))
            torch.set_flush_denormal(True)  # peaked softmax gradients are denormal-heavy: 7x slower without this
        if self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.set_float32_matmul_precision("high")

    def _build_model(self) -> GPT:
        cfg, run = self.cfg, self.run
        data_vocab = int(self.data_meta["vocab_size"]) if self.data_meta else None
        data_sha = self.data_meta.get("tokenizer_sha256") if self.data_meta else None
        init_dir = None
        if self.found is not None:
            init_dir = self.found
        elif cfg.init_from:
            if "/" not in cfg.init_from and not os.path.isdir(cfg.init_from):
                init_dir = run.require_checkpoint(cfg.init_from)  # a stage of this run
            else:
                init_dir = ckpt.resolve_checkpoint(cfg.init_from)
        if init_dir is not None:
            meta = ckpt.read_meta(init_dir)
            if "model_config" not in meta:
                raise UsageError(f"{init_dir / ckpt.META_FILE}: missing field 'model_config'")
            saved = dict(meta["model_config"])
            if data_vocab is not None and saved.get("vocab_size") != data_vocab:
                raise UsageError(f"{init_dir / ckpt.META_FILE}: checkpoint vocab_size {saved.get('vocab_size')} does "
                                 f"not match {run.data_meta} vocab_size {data_vocab} (tokenizer changed?)")
            if data_sha and meta.get("tokenizer_sha256") and meta["tokenizer_sha256"] != data_sha:
                raise UsageError(f"{init_dir / ckpt.META_FILE}: tokenizer_sha256 differs from {run.data_meta} "
                                 "(the data was tokenized with another tokenizer)")
            if self.found is not None and not cfg.init_from:  # with init_from the weights define the model
                ckpt.check_model_config(init_dir, saved, model_config(cfg, saved["vocab_size"]).to_dict())
            saved["max_seq_len"] = max(saved.get("max_seq_len", cfg.seq_len), cfg.seq_len)
            mcfg = ModelConfig(**saved)
        else:
            if data_vocab is None:
                raise UsageError(f"{run.data_meta}: no token data and no --init-from checkpoint to size the model")
            mcfg = model_config(cfg, data_vocab)
        self.tokenizer_sha = data_sha or (ckpt.read_meta(init_dir).get("tokenizer_sha256") if init_dir else None)
        seed_everything(cfg.seed)
        model = GPT(mcfg)
        if init_dir is not None:
            state = ckpt.load_state(init_dir)
            if mcfg.tie_embeddings:
                state.setdefault("lm_head.weight", state["embed_tokens.weight"])
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise UsageError(f"{init_dir / ckpt.MODEL_FILE}: weights do not match the model config "
                                 f"({str(e)[:160]})") from None
        self.init_dir = init_dir
        return model

    def _wrap(self) -> None:
        model, cfg = self.model.to(self.device), self.cfg
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for name, p in model.named_parameters():
                if p.shape[0] < self.world:
                    raise UsageError(f"--parallel fsdp: parameter {name} has {p.shape[0]} rows, fewer than the "
                                     f"{self.world} processes to shard it over (use fewer processes or --parallel ddp)")
            for block in model.layers:
                fully_shard(block)
            fully_shard(model)
            self.loss_mod: nn.Module = LossSum(model)
            self.ddp = None
        elif self.dist:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(LossSum(model), device_ids=[self.info.local_rank] if self.dev_type == "cuda" else None)
            self.loss_mod = self.ddp
        else:
            self.loss_mod, self.ddp = LossSum(model), None
        self._eager_mod: nn.Module | None = None  # set while a compiled module has not run yet
        if cfg.compile:
            self._eager_mod, self.loss_mod = self.loss_mod, torch.compile(self.loss_mod)
        self.opt = build_optimizer(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), self.device)
        self.scaler = torch.amp.GradScaler(self.dev_type, enabled=self.dtype == "fp16")

    def _autocast(self):
        return torch.autocast(self.dev_type, dtype=torch_dtype(self.dtype), enabled=self.dtype != "fp32")

    def _sync_grads(self, last: bool):
        if self.fsdp:
            self.model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return self.ddp.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _state_options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True) if self.fsdp else None

    def save(self, step: int) -> None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        model_state = None
        if self.fsdp:
            model_state = get_model_state_dict(self.model, options=self._state_options())
            model_state = {k: v.contiguous() for k, v in model_state.items()}
            if self.mcfg.tie_embeddings:
                model_state.pop("lm_head.weight", None)
        osd = get_optimizer_state_dict(self.model, self.opt, options=self._state_options())
        if self.info.is_main:
            meta = {"model_config": self.mcfg.to_dict(), "tokenizer_sha256": self.tokenizer_sha,
                    "train_config": to_dict(self.cfg), "tokens_seen": self.tokens_seen, "val": self.last_eval,
                    "init_from": str(self.init_dir) if self.init_dir and self.start_step == 0 else None}
            trainer_state = {"step": step, "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed(),
                             "total_steps": self.total_steps, "grad_accum": self.accum, "world_size": self.world,
                             "tokens_per_step": self.tokens_per_step, "loader": self.source.state_dict(),
                             "lr": self.lr, "last_eval": self.last_eval}
            optim = {"optimizer": osd, "rng": ckpt.capture_rng(), "scaler": self.scaler.state_dict()}
            ckpt.save_checkpoint(self.run, self.cfg.stage, step, self.model, meta, optim, trainer_state,
                                 model_state=model_state, keep_last=self.cfg.keep_last)
        if self.dist:
            import torch.distributed as dist

            dist.barrier()

    def _restore(self) -> None:
        """Optimizer, RNG and trainer state of the checkpoint being resumed (weights were loaded before wrapping)."""
        self.start_step, self.tokens_seen, self.prev_elapsed, self.last_eval = 0, 0, 0.0, None
        self.saved_total = None
        if self.found is None:
            return
        state = ckpt.load_trainer_state(self.found)
        optim = ckpt.load_optimizer_state(self.found)
        if state is None or optim is None:
            raise UsageError(f"{self.found}: checkpoint has no optimizer/trainer state; it cannot be resumed "
                             f"(use --init-from {self.found} with another --stage or --run)")
        try:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            opts = StateDictOptions(full_state_dict=True) if self.fsdp else None
            set_optimizer_state_dict(self.model, self.opt, optim["optimizer"], options=opts)
            ckpt.restore_rng(optim["rng"])
            if self.scaler.is_enabled() and optim.get("scaler"):
                self.scaler.load_state_dict(optim["scaler"])
            self.start_step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise UsageError(f"{self.found / ckpt.OPTIM_FILE}: does not match this model/optimizer ({e})") from None
        if state.get("tokens_per_step") != self.tokens_per_step:
            raise UsageError(f"{self.found / ckpt.STATE_FILE}: saved tokens_per_step {state.get('tokens_per_step')} "
                             f"!= {self.tokens_per_step} now; keep --total-batch-tokens to resume exactly")
        self.prev_elapsed = float(state.get("elapsed_s", 0.0))
        self.last_eval = state.get("last_eval")
        saved_cfg = ckpt.read_meta(self.found).get("train_config") or {}
        if (saved_cfg.get("max_steps"), saved_cfg.get("time_budget")) == (self.cfg.max_steps, self.cfg.time_budget):
            self.saved_total = state.get("total_steps")

    # ------------------------------------------------------------------------------------------------ steps
    def _micro(self, x: torch.Tensor, y: torch.Tensor, scale: float, last: bool) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        with self._sync_grads(last):
            with self._autocast():
                loss_sum = self._forward_loss(x, y)
            self.scaler.scale(loss_sum * scale).backward()
        return loss_sum.detach()

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss module's forward; if torch.compile fails on its first call (no C++ compiler, an unsupported
        platform...), say so and go on eagerly: a real error in the model or data then raises again, eagerly."""
        if self._eager_mod is None:
            return self.loss_mod(x, y)
        try:
            out = self.loss_mod(x, y)
        except Exception as e:  # any compile failure; eager reruns the same call
            first = (str(e).splitlines() or [""])[0][:200]
            print0(f"warning: torch.compile failed ({type(e).__name__}: {first}); continuing without it "
                   "(--compile false skips the attempt)")
            self.loss_mod = self._eager_mod
            out = self.loss_mod(x, y)
        self._eager_mod = None
        return out

    def _dry_step(self) -> None:
        x, y = self.source.next_batch(0, 0)
        n = max(1, int((y != -1).sum()))
        self._micro(x, y, 1.0 / n, last=True)
        self._dry_opt.step()
        self._dry_opt.zero_grad(set_to_none=True)

    def elapsed(self) -> float:
        return self.prev_elapsed + (time.perf_counter() - self.t_start)

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, Any]:
        model = self.model
        model.eval()
        z = lambda: torch.zeros((), dtype=torch.float64, device=self.device)  # noqa: E731
        nats, count, nats_b, nbytes = z(), z(), z(), z()
        tb = torch.from_numpy(self.token_bytes).to(self.device) if self.token_bytes is not None else None
        for x, y in self.source.val_batches():
            x, y = x.to(self.device), y.to(self.device)
            with self._autocast():
                logits, _ = model(x)
            for acc, v in zip((nats, count, nats_b, nbytes), eval_sums(logits, y, tb)):
                acc += v
        stats = _dist_sum(torch.stack([nats, count, nats_b, nbytes]), self.dist).tolist()
        out: dict[str, Any] = {"stage": self.cfg.stage, "step": step,
                               "val_loss": stats[0] / stats[1] if stats[1] else None,
                               "val_bpb": stats[2] / math.log(2) / stats[3] if stats[3] else None}
        if self.cfg.sample_tokens > 0 and self.cfg.sample_prompts and (self.info.is_main or self.fsdp):
            try:
                with self._autocast():
                    out["samples"] = sample_completions(model, self.cfg.sample_prompts, self.run.tokenizer_json,
                                                        self.cfg.sample_tokens, seed=self.cfg.seed + step)
            except Exception as e:  # sampling is a courtesy; never kill a run over it
                out["samples"] = [{"error": f"{type(e).__name__}: {e}"}]
        model.train()
        return out

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        self._wrap()
        self._restore()
        self.schedule = resolve_schedule(cfg.schedule, cfg.time_budget)
        self.lr = lr_at(self.start_step, cfg.lr, cfg.max_steps, cfg.warmup_steps, self.schedule, cfg.min_lr_ratio,
                        cfg.decay_frac)
        # ---- preflight: memory check, then timed dry steps (lr 0: weights unchanged) before anything is written
        num_params = self.num_params
        est = preflight.estimate_memory(self.mcfg, num_params, cfg.batch_size, cfg.seq_len, self.dtype,
                                        self.world, self.fsdp)
        preflight.check_fits(est, self.device, cfg.batch_size, cfg.seq_len, self.accum, self.world, self.fsdp)
        tok_s = None
        if cfg.preflight_steps > 0:
            self._dry_opt = build_optimizer(self.model, 0.0, cfg.weight_decay, (cfg.beta1, cfg.beta2), self.device)
            tok_s = preflight.measure_throughput(self._dry_step, cfg.batch_size * cfg.seq_len, cfg.preflight_steps,
                                                 self.device)
            del self._dry_opt
        self.total_steps = cfg.max_steps
        if self.saved_total:
            self.total_steps = int(self.saved_total)
        elif cfg.time_budget > 0 and tok_s:
            remaining_s = cfg.time_budget * 60 - self.prev_elapsed
            fit = int(0.92 * remaining_s * tok_s * self.world / self.tokens_per_step)  # 8% for evaluation
            self.total_steps = max(self.start_step + 1, min(cfg.max_steps, self.start_step + fit))
        summary = preflight.report(self.mcfg, num_params, self.flops_per_token, est, self.device, self.dtype,
                                   self.world, cfg.batch_size, cfg.seq_len, self.accum, self.total_steps,
                                   self.start_step, tok_s, self.peak)
        if cfg.preflight_only:
            return {"preflight": summary, "step": self.start_step}
        if info.is_main:
            dropped = truncate_metrics(self.run, cfg.stage, self.start_step)
            save_config(cfg, self.run.config_json, section=cfg.stage)
            if self.found is not None:
                print0(f"resuming {self.found} at step {self.start_step}" + (
                    f" (dropped {dropped} later metrics lines)" if dropped else ""))
        return self._loop(summary)

    def _loop(self, summary: dict[str, Any]) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        step, last_loss, tok_rate, mfu, last_saved = self.start_step, None, None, None, -1
        self.t_start = time.perf_counter()
        win_t, win_tokens = time.perf_counter(), 0
        self.pause_total, self.last_pause = 0.0, 0.0  # evaluation + checkpoint seconds (all, and the latest)
        self._windows: list[float] = []  # seconds per training step of the latest log windows (time budget)
        loss_win = torch.zeros((), device=self.device)
        count_win = torch.zeros((), dtype=torch.float64, device=self.device)
        bar = progress(total=self.total_steps, initial=step, desc=f"{cfg.stage}", unit="step")
        with _StopFlag() as stop:
            while step < self.total_steps:
                self.lr = lr_at(step, cfg.lr, self.total_steps, cfg.warmup_steps, self.schedule, cfg.min_lr_ratio,
                                cfg.decay_frac)
                for group in self.opt.param_groups:
                    group["lr"] = self.lr
                batches = [self.source.next_batch(step, m) for m in range(self.accum)]
                count = torch.tensor(float(sum(int((y != -1).sum()) for _, y in batches)), dtype=torch.float64)
                count = float(_dist_sum(count.to(self.device), self.dist))
                scale = self.world / max(count, 1.0)
                for m, (x, y) in enumerate(batches):
                    loss_win += self._micro(x, y, scale, last=m == self.accum - 1)
                count_win += count
                if cfg.grad_clip > 0:
                    self.scaler.unscale_(self.opt)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
                step += 1
                self.tokens_seen += self.tokens_per_step
                win_tokens += self.tokens_per_step
                bar.update(1)
                if step % cfg.log_every == 0 or step == self.total_steps:
                    last_loss = float(_dist_sum(loss_win, self.dist)) / max(float(count_win), 1.0)
                    dt = time.perf_counter() - win_t
                    tok_rate = win_tokens / max(dt, 1e-9)
                    mfu = tok_rate * self.flops_per_token / (self.peak * 1e12 * self.world) if self.peak else None
                    rec = {"stage": cfg.stage, "step": step, "loss": last_loss, "lr": self.lr,
                           "tokens_per_s": tok_rate, "mfu": mfu, "tokens": self.tokens_seen,
                           "time_s": round(self.elapsed(), 3), "planned_steps": self.total_steps}
                    if info.is_main:
                        append_jsonl(self.run.metrics_jsonl, rec)
                    bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tok_rate:,.0f}",
                                    mfu=f"{100 * mfu:.1f}%" if mfu is not None else "n/a")
                    if cfg.time_budget > 0:
                        self._replan(step, dt * self.tokens_per_step / max(win_tokens, 1), bar)
                    loss_win.zero_()
                    count_win.zero_()
                    win_t, win_tokens = time.perf_counter(), 0
                flag = torch.tensor(float(bool(stop.signum) or self._out_of_time(step)), device=self.device)
                if self.dist:
                    import torch.distributed as dist

                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stopping = bool(flag.item())
                t_pause = time.perf_counter()
                paused = False
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == self.total_steps or stopping:
                    self._do_eval(step)
                    paused = True
                if (cfg.save_every and step % cfg.save_every == 0) or step == self.total_steps or stopping:
                    self.save(step)
                    last_saved = step
                    paused = True
                pause = time.perf_counter() - t_pause
                win_t += pause  # evaluation and saving are not training time
                if paused:
                    self.pause_total += pause
                    self.last_pause = pause
                if stopping:
                    break
        bar.close()
        if last_saved != step and step > self.start_step:
            self.save(step)
        if info.is_main:
            plot_loss(self.run, cfg.stage)
        why = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}.get(stop.signum, "")
        if why:
            print0(f"{why} at step {step}: checkpoint saved; rerun the same command to resume")
        elif step >= self.total_steps and step == self.start_step:
            print0(f"{cfg.stage} already finished at step {step} (raise --max-steps to train further)")
        return {**summary, "step": step, "total_steps": self.total_steps, "loss": last_loss,
                "tokens_per_s": tok_rate, "mfu": mfu, "tokens_seen": self.tokens_seen,
                "val_loss": (self.last_eval or {}).get("val_loss"), "val_bpb": (self.last_eval or {}).get("val_bpb"),
                "stopped": why or None, "elapsed_s": self.elapsed() if step > self.start_step else self.prev_elapsed,
                "checkpoint": str(self.run.latest_step_dir(cfg.stage))}

    def _out_of_time(self, step: int) -> bool:
        """Past 1.5x the budget: a safety stop. The plan (re-fitted at each log step, frozen once the decay starts,
        and started at once by a run found late) is what ends a time-budgeted run near its budget."""
        return self.cfg.time_budget > 0 and self.elapsed() >= 1.5 * self.cfg.time_budget * 60

    def _replan(self, step: int, train_step_s: float, bar) -> None:
        """Re-fit the planned total to the time left (until the decay starts); rank 0's answer is broadcast."""
        cfg = self.cfg
        done = max(1, step - self.start_step)
        # seconds per training step: the median of the last 3 log windows (the faster of the first 2), so one
        # busy window, or the first one with its warm-up, does not move the plan and a lasting change does; plus
        # evaluation/checkpoint time amortised over the steps so far
        self._windows = (self._windows + [train_step_s])[-3:]
        recent = sorted(self._windows)
        step_s = recent[1] if len(recent) == 3 else recent[0]
        step_s += self.pause_total / done
        reserve = self.last_pause or 0.02 * cfg.time_budget * 60  # the final evaluation + checkpoint
        remaining = cfg.time_budget * 60 - self.elapsed() - reserve
        new = replan_total(step, self.total_steps, remaining, step_s, cfg.max_steps, self.schedule, cfg.decay_frac)
        if self.dist:
            import torch.distributed as dist

            t = torch.tensor(new, dtype=torch.int64, device=self.device)
            dist.broadcast(t, src=0)
            new = int(t.item())
        if new != self.total_steps:
            self.total_steps = new
            bar.total = new
            bar.refresh()

    def _do_eval(self, step: int) -> None:
        res = self.evaluate(step)
        self.last_eval = {k: res[k] for k in ("val_loss", "val_bpb")}
        if self.info.is_main:
            append_jsonl(self.run.metrics_jsonl, res)
            bpb = f", val bpb {res['val_bpb']:.4f}" if res["val_bpb"] is not None else ""
            if res["val_loss"] is not None:
                print0(f"\nstep {step}: val loss {res['val_loss']:.4f}{bpb}")
            for s in res.get("samples", []):
                print0(f"  sample {s.get('prompt', '')!r} -> {s.get('completion', s.get('error'))!r}")
            plot_loss(self.run, self.cfg.stage)
