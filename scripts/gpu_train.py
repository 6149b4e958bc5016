"""Run ``ns-train ARGS...`` in this process and write step times, peak GPU memory and size to JSON.

    python scripts/gpu_train.py OUT.json unified-lift --data scene/ ...
    python scripts/gpu_train.py --eval --load-config CONFIG --output-path eval.json   (ns-eval)

Offline, splatfacto's LPIPS cannot fetch its backbone weights: here it becomes NaN instead of
a crash (unified-lift already does that itself), for both methods alike.

Each training iteration is timed between two ``torch.cuda.synchronize()`` calls (eval and
checkpointing happen outside ``train_iteration`` and are not counted); the same wrapper runs
for splatfacto and unified-lift so their ratio compares like with like.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def _offline_lpips() -> None:
    import torchmetrics.image.lpip as lpip  # splatfacto imports it inside populate_modules

    original = lpip.LearnedPerceptualImagePatchSimilarity

    def build(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except Exception as err:  # no internet: the torchvision backbone download fails
            print(f"LPIPS unavailable ({type(err).__name__}); reported as NaN")
            return lambda *_: torch.tensor(float("nan"))

    lpip.LearnedPerceptualImagePatchSimilarity = build


def main() -> None:
    _offline_lpips()
    if sys.argv[1] == "--eval":
        from nerfstudio.scripts.eval import entrypoint as eval_entrypoint

        sys.argv = ["ns-eval"] + sys.argv[2:]
        eval_entrypoint()
        return
    out_path, args = sys.argv[1], sys.argv[2:]
    from nerfstudio.engine.trainer import Trainer
    from nerfstudio.scripts.train import entrypoint

    from ulift_ns.trainer import UnifiedLiftTrainer

    times, state = [], {"depth": 0, "trainer": None}
    cuda = torch.cuda.is_available()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(original):
        def wrapper(self, step):
            state["trainer"] = self
            state["depth"] += 1
            outer = state["depth"] == 1
            if outer:
                sync()
                start = time.perf_counter()
            try:
                return original(self, step)
            finally:
                state["depth"] -= 1
                if outer:
                    sync()
                    times.append(time.perf_counter() - start)

        return wrapper

    for cls in (Trainer, UnifiedLiftTrainer):
        if "train_iteration" in cls.__dict__:
            cls.train_iteration = timed(cls.__dict__["train_iteration"])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sys.argv = ["ns-train"] + args
    error = None
    try:
        entrypoint()
    except SystemExit as err:
        error = None if err.code in (0, None) else f"exit {err.code}"
    except Exception as err:  # recorded, then re-raised after the JSON is written
        error = f"{type(err).__name__}: {err}"
    trainer = state["trainer"]
    n_gauss = int(trainer.pipeline.model.num_points) if trainer is not None else None
    warm = times[50:] if len(times) > 100 else times
    result = {
        "args": args,
        "steps_timed": len(times),
        "step_ms_median_after_50": 1000 * sorted(warm)[len(warm) // 2] if warm else None,
        "step_ms_mean_after_50": 1000 * sum(warm) / len(warm) if warm else None,
        "step_ms_first": 1000 * times[0] if times else None,
        "peak_gpu_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "peak_gpu_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
        "num_gaussians_final": n_gauss,
        "config": str(trainer.config.get_base_dir() / "config.yml") if trainer is not None else None,
        "error": error,
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    if error:
        sys.exit(1)


if __name__ == "__main__":
    main()
