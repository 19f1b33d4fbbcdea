"""The training loop shared by pretraining and SFT: AdamW + schedule, accumulation, clipping, bf16 autocast,
DDP/FSDP2 under torchrun, evaluation (loss + bits per byte + samples), metrics, checkpoints and exact resume.

    from scalelab.lm.train.loop import TrainConfig, train
    summary = train(TrainConfig(run="runs/demo", model="micro", max_steps=500))          # pretraining
    summary = train(TrainConfig(run="runs/demo", stage="chat", init_from="base"), source=my_sft_source)  # SFT

``source`` follows lm.data.loader.BatchSource (``next_batch(step, micro_step) -> (x, y)``, y == -1 where masked;
``val_batches()``; ``state_dict()``); without one, the run's token shards are used. The loss of a step is the sum of
per-token losses over the whole global batch divided by its number of unmasked targets (all ranks and micro-steps),
so masked SFT batches weigh tokens equally and an all-masked batch gives a zero gradient, never NaN.

Time budget (``--time-budget MIN``): the planned total is re-fitted to the measured speed at each log step until
the LR decay starts (see optim.py); the plan is saved in trainer_state, so a resumed run continues it.

Command line: ``scalelab pretrain --run runs/demo --model micro --time-budget 5`` (scalelab/cli/pretrain.py);
under torchrun the same command runs DDP (``--parallel ddp``, default) or FSDP2 (``--parallel fsdp``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from scalelab.common import (
    RunLock,
    StopFlag,
    UsageError,
    append_jsonl,
    broadcast_int,
    destroy_distributed,
    dist_sum,
    init_distributed,
    print0,
    progress,
    resolve_device,
    resolve_dtype,
    seed_everything,
    setup_backend,
    torch_dtype,
)
from scalelab.config import save_config, to_dict
from scalelab.lm import checkpoint as ckpt
from scalelab.lm.data.loader import (
    BatchSource,
    check_same_data,
    load_meta,
    load_token_bytes,
    to_device,
    token_source,
    tokenize_command,
)
from scalelab.lm.model import GPT
from scalelab.lm.train import preflight
from scalelab.lm.train.config import TrainConfig, batch_geometry, model_config, validate
from scalelab.lm.train.log import log_eval, plot_loss, sample_completions, sampling_model, truncate_metrics
from scalelab.lm.train.loss import LossSum, val_sums
from scalelab.lm.train.optim import (
    build_optimizer,
    lr_at,
    peak_tflops,
    replan_total,
    resolve_schedule,
    seconds_per_step,
)
from scalelab.runs import RunDir


def train(cfg: TrainConfig, source: BatchSource | None = None, given: Iterable[str] | None = None,
          start: ckpt.Start | None = None, extra_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) ``cfg.stage`` of ``cfg.run``; returns a summary dict (steps, losses, bpb, tokens/s).

    ``given``: the fields the user set (a command line's); the rest come from a resumed checkpoint's saved config.
    None means every field of ``cfg`` stands (a library call). ``start``: where the stage starts, when the caller
    already resolved it (SFT does, to size its rows). ``extra_config``: more sections for the run's config.json,
    written in the same single write as the stage's own.
    """
    validate(cfg)
    given = frozenset(dataclasses.asdict(cfg)) if given is None else frozenset(given)
    if start is None:
        start = ckpt.resolve_start(cfg, given)
    validate(start.config)
    device = resolve_device(start.config.device)
    info = init_distributed(device)
    try:
        # rank 0 holds the run folder's lock: a second writer on the same run is refused, not interleaved
        with RunLock(cfg.run) if info.is_main else contextlib.nullcontext():
            return Trainer(start, given, device, info, source, extra_config or {}).fit()
    finally:
        destroy_distributed()


class Trainer:
    """One stage's training. Every attribute is created here; _restore and _loop only update them."""

    def __init__(self, start: ckpt.Start, given: frozenset[str], device: str, info, source: BatchSource | None,
                 extra_config: dict[str, Any]) -> None:
        cfg = start.config
        # ---- where and how it runs
        self.cfg, self.start, self.given, self.device, self.info = cfg, start, given, device, info
        self.extra_config = extra_config
        self.run = RunDir(cfg.run)
        self.dtype = resolve_dtype(cfg.dtype, device)
        self.dev_type = device.split(":")[0]
        self.world, self.dist = info.world_size, info.enabled
        self.fsdp = cfg.parallel == "fsdp" and self.dist
        if device.startswith("cuda") and self.dist:
            self.device = device = f"cuda:{info.local_rank}"
        setup_backend(self.device, self.world, self.cfg.num_threads)
        # ---- the model, its data and batch geometry
        self.data_meta = load_meta(self.run) if (source is None or self.run.data_meta.is_file()) else None
        self.found = start.step_dir if start.kind == "resume" else None
        self.init_dir = start.step_dir if start.kind == "init" else None
        self.tokenizer_sha: str | None = None
        self.model = self._build_model()
        self.mcfg = self.model.config
        self.accum, self.tokens_per_step = batch_geometry(cfg.batch_size, cfg.seq_len, self.world,
                                                          cfg.total_batch_tokens)
        self.source = source if source is not None else token_source(
            self.run, cfg.seq_len, cfg.batch_size, self.accum, info.rank, self.world, cfg.seed, cfg.eval_tokens,
            self.data_meta)
        self.token_bytes = load_token_bytes(self.run, self.mcfg.vocab_size) if self.data_meta is not None else None
        self.flops_per_token = self.model.flops_per_token(cfg.seq_len)
        self.num_params = self.model.num_params()
        self.peak = cfg.peak_tflops or peak_tflops(device, self.dtype)
        # ---- wrapped model and optimizer (set by _wrap)
        self.loss_mod: nn.Module | None = None
        self.ddp: nn.Module | None = None
        self.eager_mod: nn.Module | None = None  # set while a compiled module has not run yet
        self.opt: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        # ---- progress (set by _restore from a resumed checkpoint, advanced by _loop)
        self.start_step, self.tokens_seen, self.prev_elapsed = 0, 0, 0.0
        self.last_eval: dict[str, Any] | None = None
        self.saved_total: int | None = None
        self.schedule = resolve_schedule(cfg.schedule, cfg.time_budget)
        self.total_steps, self.lr = cfg.max_steps, cfg.lr
        # ---- clocks of the loop: evaluation + checkpoint seconds (all, and the latest), recent step times
        self.t_start = time.perf_counter()
        self.pause_total, self.last_pause = 0.0, 0.0
        self.windows: list[float] = []

    # ------------------------------------------------------------------------------------------------ setup
    def _build_model(self) -> GPT:
        cfg, run, start = self.cfg, self.run, self.start
        data_vocab = int(self.data_meta["vocab_size"]) if self.data_meta else None
        data_sha = self.data_meta.get("tokenizer_sha256") if self.data_meta else None
        if start.step_dir is None:
            if data_vocab is None:
                raise UsageError(f"{run.data_meta}: no token data and no --init-from checkpoint to size the model "
                                 f"(run `{tokenize_command(run)}` first)")
            self.tokenizer_sha = data_sha
            seed_everything(cfg.seed)
            return GPT(model_config(cfg, data_vocab))
        meta, where = start.meta, start.step_dir / ckpt.META_FILE
        saved = ckpt.saved_model_config(start.step_dir, meta).to_dict()  # type-checked, field by field
        if data_vocab is not None and saved["vocab_size"] < data_vocab:
            raise UsageError(f"{where}: checkpoint vocab_size {saved['vocab_size']} is smaller than "
                             f"{run.data_meta} vocab_size {data_vocab} (tokenizer changed?)")
        if data_sha and meta.get("tokenizer_sha256") and meta["tokenizer_sha256"] != data_sha:
            raise UsageError(f"{where}: tokenizer_sha256 differs from {run.data_meta} "
                             "(the data was tokenized with another tokenizer)")
        if start.kind == "resume" and not cfg.init_from:
            # model flags given on a resume must agree with the checkpoint; what was not given, the weights decide
            keys = {k for k in ("n_layer", "n_embd", "n_head", "n_kv_head", "tie_embeddings") if k in self.given}
            if self.given & {"model", "depth"}:
                keys |= {"n_layer", "n_embd", "n_head", "n_kv_head", "intermediate_size"}
            requested = model_config(cfg, saved["vocab_size"]).to_dict()
            ckpt.check_model_config(start.step_dir, {k: saved.get(k) for k in keys}, {k: requested[k] for k in keys})
        self.tokenizer_sha = data_sha or meta.get("tokenizer_sha256")
        seed_everything(cfg.seed)
        return ckpt.model_from_checkpoint(start.step_dir, meta, max_seq_len=cfg.seq_len)

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
        if cfg.compile:
            self.eager_mod, self.loss_mod = self.loss_mod, torch.compile(self.loss_mod)
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
        check_same_data(state.get("loader") or {}, self.source.state_dict(), self.found / ckpt.STATE_FILE,
                        self.cfg.resume_on_new_data)
        self.prev_elapsed = float(state.get("elapsed_s", 0.0))
        self.last_eval = state.get("last_eval")
        saved_cfg = self.start.meta.get("train_config") or {}
        if (saved_cfg.get("max_steps"), saved_cfg.get("time_budget")) == (self.cfg.max_steps, self.cfg.time_budget):
            self.saved_total = state.get("total_steps")

    # ------------------------------------------------------------------------------------------------ steps
    def _micro(self, x: torch.Tensor, y: torch.Tensor, scale: float | torch.Tensor, last: bool) -> torch.Tensor:
        x, y = to_device(x, self.device), to_device(y, self.device)
        with self._sync_grads(last):
            with self._autocast():
                loss_sum = self._forward_loss(x, y)
            self.scaler.scale(loss_sum * scale).backward()
        return loss_sum.detach()

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss module's forward; if torch.compile fails on its first call (no C++ compiler, an unsupported
        platform...), say so and go on eagerly: a real error in the model or data then raises again, eagerly."""
        if self.eager_mod is None:
            return self.loss_mod(x, y)
        try:
            out = self.loss_mod(x, y)
        except Exception as e:  # any compile failure; eager reruns the same call
            first = (str(e).splitlines() or [""])[0][:200]
            print0(f"warning: torch.compile failed ({type(e).__name__}: {first}); continuing without it "
                   "(--compile false skips the attempt)")
            self.loss_mod = self.eager_mod
            out = self.loss_mod(x, y)
        self.eager_mod = None
        return out

    def _dry_step(self, dry_opt: torch.optim.Optimizer) -> None:
        x, y = self.source.next_batch(0, 0)
        n = max(1, int((y != -1).sum()))
        self._micro(x, y, 1.0 / n, last=True)
        dry_opt.step()
        dry_opt.zero_grad(set_to_none=True)

    def elapsed(self) -> float:
        return self.prev_elapsed + (time.perf_counter() - self.t_start)

    def evaluate(self, step: int) -> dict[str, Any]:
        model = self.model
        model.eval()
        tb = torch.from_numpy(self.token_bytes).to(self.device) if self.token_bytes is not None else None
        sums = val_sums(model, self.source.val_batches(), self.device, self._autocast, tb)
        stats = dist_sum(sums, self.dist).tolist()
        out: dict[str, Any] = {"stage": self.cfg.stage, "step": step,
                               "val_loss": stats[0] / stats[1] if stats[1] else None,
                               "val_bpb": stats[2] / math.log(2) / stats[3] if stats[3] else None}
        if self.cfg.sample_max_tokens > 0 and self.cfg.sample_prompts:
            sampler = sampling_model(self.model, self.info.is_main, self.fsdp, self.device)  # FSDP: every rank gathers
            if sampler is not None:
                try:
                    with self._autocast():
                        out["samples"] = sample_completions(sampler, self.cfg.sample_prompts,
                                                            self.run.tokenizer_json, self.cfg.sample_max_tokens,
                                                            seed=self.cfg.seed + step)
                except Exception as e:  # sampling is a courtesy; never kill a run over it
                    out["samples"] = [{"error": f"{type(e).__name__}: {e}"}]
        model.train()
        return out

    # ------------------------------------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        self._wrap()
        self._restore()
        self.lr = lr_at(self.start_step, cfg.lr, cfg.max_steps, cfg.warmup_steps, self.schedule, cfg.min_lr_ratio,
                        cfg.decay_frac)
        # ---- preflight: memory check, then timed dry steps (lr 0: weights unchanged) before anything is written
        est = preflight.estimate_memory(self.mcfg, self.num_params, cfg.batch_size, cfg.seq_len, self.dtype,
                                        self.world, self.fsdp)
        plan = preflight.Plan(self.mcfg, self.num_params, self.flops_per_token, est, self.device, self.dtype,
                              self.world, cfg.batch_size, cfg.seq_len, self.accum, self.fsdp, self.peak)
        preflight.describe(plan)
        preflight.check_fits(plan)
        tok_s = None
        if cfg.preflight_steps > 0:
            dry_opt = build_optimizer(self.model, 0.0, cfg.weight_decay, (cfg.beta1, cfg.beta2), self.device)
            tok_s = preflight.measure_throughput(lambda: self._dry_step(dry_opt), cfg.batch_size * cfg.seq_len,
                                                 cfg.preflight_steps, self.device)
            del dry_opt
        if self.saved_total:
            self.total_steps = int(self.saved_total)
        elif cfg.time_budget > 0 and tok_s:
            remaining_s = cfg.time_budget * 60 - self.prev_elapsed
            fit = int(0.92 * remaining_s * tok_s * self.world / self.tokens_per_step)  # 8% for evaluation
            self.total_steps = max(self.start_step + 1, min(cfg.max_steps, self.start_step + fit))
        summary = preflight.report(plan, self.total_steps, self.start_step, tok_s)
        if cfg.preflight_only:
            return {"preflight": summary, "step": self.start_step}
        if info.is_main:
            dropped = truncate_metrics(self.run, cfg.stage, self.start_step)
            save_config(cfg, self.run.config_json, section=cfg.stage, extra=self.extra_config)
            if self.found is not None:
                print0(f"resuming {self.found} at step {self.start_step}" + (
                    f" (dropped {dropped} later metrics lines)" if dropped else ""))
            elif self.init_dir is not None:
                print0(f"starting from the weights of {self.init_dir} (fresh optimizer)")
        return self._loop(summary)

    def _loop(self, summary: dict[str, Any]) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        step, last_loss, tok_rate, mfu, last_saved = self.start_step, None, None, None, -1
        self.t_start = time.perf_counter()
        win_t, win_tokens = time.perf_counter(), 0
        loss_win = torch.zeros((), device=self.device)
        count_win = torch.zeros((), dtype=torch.float64, device=self.device)
        bar = progress(total=self.total_steps, initial=step, desc=f"{cfg.stage}", unit="step")
        with StopFlag() as stop:
            while step < self.total_steps:
                self.lr = lr_at(step, cfg.lr, self.total_steps, cfg.warmup_steps, self.schedule, cfg.min_lr_ratio,
                                cfg.decay_frac)
                for group in self.opt.param_groups:
                    group["lr"] = self.lr
                batches = [self.source.next_batch(step, m) for m in range(self.accum)]
                # the targets are counted on the CPU batches; only under torchrun does the count go to the device
                # (all-reduced there, used as a tensor), so no micro-step waits for the GPU
                count = float(sum(int((y != -1).sum()) for _, y in batches))
                if self.dist:
                    count = dist_sum(torch.tensor(count, dtype=torch.float64, device=self.device), True)
                    scale = self.world / count.clamp(min=1.0)
                else:
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
                logged = step % cfg.log_every == 0 or step == self.total_steps
                if logged:
                    last_loss = float(dist_sum(loss_win, self.dist)) / max(float(count_win), 1.0)
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
                stopping = bool(stop.signum) or self._out_of_time(step)
                if self.dist:  # ranks agree at log steps only: one synchronisation a log window, not a step
                    stopping = logged and self._agree(stopping)
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

    def _agree(self, stopping: bool) -> bool:
        """True when any rank asks to stop (all-reduced)."""
        import torch.distributed as dist

        flag = torch.tensor(float(stopping), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _out_of_time(self, step: int) -> bool:
        """Past 1.5x the budget: a safety stop. The plan (re-fitted at each log step, frozen once the decay starts,
        and started at once by a run found late) is what ends a time-budgeted run near its budget."""
        return self.cfg.time_budget > 0 and self.elapsed() >= 1.5 * self.cfg.time_budget * 60

    def _replan(self, step: int, train_step_s: float, bar) -> None:
        """Re-fit the planned total to the time left (until the decay starts); rank 0's answer is broadcast."""
        cfg = self.cfg
        self.windows = (self.windows + [train_step_s])[-3:]
        step_s = seconds_per_step(self.windows, self.pause_total, max(1, step - self.start_step))
        reserve = self.last_pause or 0.02 * cfg.time_budget * 60  # the final evaluation + checkpoint
        remaining = cfg.time_budget * 60 - self.elapsed() - reserve
        new = replan_total(step, self.total_steps, remaining, step_s, cfg.max_steps, self.schedule, cfg.decay_frac)
        new = broadcast_int(new, self.device, self.dist)
        if new != self.total_steps:
            self.total_steps = new
            bar.total = new
            bar.refresh()

    def _do_eval(self, step: int) -> None:
        res = self.evaluate(step)
        self.last_eval = {k: res[k] for k in ("val_loss", "val_bpb")}
        if self.info.is_main:
            log_eval(self.run, self.cfg.stage, res)
