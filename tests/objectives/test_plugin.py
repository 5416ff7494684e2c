"""A new objective is one class: registered from this test file alone, it trains through ``pretrain``
with its own logit init, per-row data, batch sampler and post-step hook, and nothing in medvlp/train
knows its name."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from medvlp.config import TrainConfig
from medvlp.data.dataset import StepSampler
from medvlp.objectives import DataNeeds, Objective, build_objective, register
from medvlp.train import pretrain

SEEN: dict[str, object] = {"batches": 0, "rows": set(), "post_steps": 0, "sampler_batch": None}


class _EveryOtherStepSampler(StepSampler):
    """The uniform sampler, recorded (stands for an objective's own batching)."""


class _Batching:
    def fit_batch(self, batch, *, given, world, item_rows):
        return batch - batch % 4  # this objective wants multiples of 4

    def sampler(self, batch, *, seed, total_steps, start_step, rank, world):
        SEEN["sampler_batch"] = batch
        return _EveryOtherStepSampler(self.n, batch, seed=seed, total_steps=total_steps, start_step=start_step,
                                      rank=rank, world=world)

    def describe(self, batch):
        return f"toy batches of {batch}"


class ToyCosine(Objective):
    """1 - cosine of matched pairs, weighted per row by a field the objective itself provides."""

    name = "toy_cosine"
    logit_init = (math.log(7.0), None)
    init_rank = 5
    needs_rows = True

    def data_needs(self, manifest, card, model, options):
        batching = _Batching()
        batching.n = len(manifest)
        return DataNeeds(row_fields=lambda row: {"toy_row": row}, batching=batching, info="toy row ids")

    @torch.no_grad()
    def post_step(self, model):
        SEEN["post_steps"] += 1

    def forward(self, out, batch):
        assert "toy_row" in batch, "the objective's row fields reach the batch"
        SEEN["batches"] += 1
        SEEN["rows"].update(int(r) for r in batch["toy_row"])
        cos = F.cosine_similarity(out["image_features"], out["text_features"], dim=-1)
        return {"toy_cosine": (1 - cos).mean()}


register("toy_cosine", ToyCosine)


def test_a_toy_objective_registered_here_trains(small_demo: Path, tmp_path: Path) -> None:
    obj = build_objective("toy_cosine")
    assert obj.logit_init == (math.log(7.0), None) and obj.row_parts() == ["toy_cosine"]
    cfg = TrainConfig(domain="pathology", data=str(small_demo), steps=3, batch_size=18, out=str(tmp_path / "run"),
                      workers=0, log_every=1, threads=2, objective="toy_cosine", eval=False)
    result = pretrain(cfg, quiet=True)
    assert result.steps == 3
    assert SEEN["batches"] == 3 and SEEN["post_steps"] == 3 and SEEN["sampler_batch"] == 16
    assert len(SEEN["rows"]) > 16  # rows of 3 batches of 16
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3] and all("toy_cosine" in r for r in lines)
    assert all({"forward_time", "backward_time", "optimizer_time", "peak_rss_mb"} <= set(r) for r in lines)
    # the model was built with the toy objective's logit init: exp(log 7) = 7, moved little by 3 steps
    assert abs(lines[0]["logit_scale"] - 7.0) < 0.2
    assert (tmp_path / "run" / "model" / "medvlp.json").is_file()


def test_dry_run_prints_the_layout_and_writes_nothing(small_demo: Path, tmp_path: Path, capsys) -> None:
    cfg = TrainConfig(domain="pathology", data=str(small_demo), batch_size=16, out=str(tmp_path / "run"),
                      workers=0, threads=2, dry_run=True)
    result = pretrain(cfg)
    printed = capsys.readouterr().out
    assert "world size 1" in printed and "global batch 16" in printed and "per-rank batch 16" in printed
    assert result.info["dry_run"] and result.info["steps"] > 0
    assert not (tmp_path / "run").exists()
