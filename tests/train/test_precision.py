"""The precision default: bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere; on CPU in bf16
the short-sequence towers use the math attention path."""

from __future__ import annotations

import pytest
import torch


def test_default_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from medvlp.train import setup

    assert setup.default_precision(torch.device("cuda")) == "bf16"
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: True)
    assert setup.default_precision(torch.device("cpu")) == "bf16"
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: False)
    assert setup.default_precision(torch.device("cpu")) == "fp32"


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from medvlp.train import setup

    real = setup.Path
    for flags, expected in ((" fpu avx512f avx512_bf16 ", True), (" fpu amx_bf16 amx_tile", True),
                            (" fpu avx2 avx512f", False)):
        info = tmp_path / f"cpuinfo-{expected}-{len(flags)}"
        info.write_text(f"processor\t: 0\nflags\t\t:{flags}\n")
        monkeypatch.setattr(setup, "Path", lambda p, info=info: info if p == "/proc/cpuinfo" else real(p))
        assert setup.cpu_has_native_bf16() is expected


def test_math_attention_only_for_short_sequences_in_cpu_bf16() -> None:
    from medvlp.models import create_model
    from medvlp.train.loop import SHORT_SEQUENCE, sequence_lengths

    model = create_model("tiny")
    assert sequence_lengths(model) == (65, 32)  # 64 px / 8 px patches + class token; 32 text tokens
    assert max(sequence_lengths(model)) <= SHORT_SEQUENCE


def test_a_bf16_cpu_run_trains(small_demo, tmp_path) -> None:
    import json
    import math

    from medvlp.config import TrainConfig
    from medvlp.train import pretrain

    out = tmp_path / "run"
    pretrain(TrainConfig(domain="pathology", data=str(small_demo), steps=2, batch_size=16, device="cpu",
                         workers=0, eval=False, out=str(out), log_every=1, threads=2, precision="bf16"), quiet=True)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(math.isfinite(r["loss"]) for r in recs)
    assert "precision: bf16" in (out / "config.yaml").read_text()
