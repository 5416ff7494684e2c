"""``medvlp ontology {stats,search,show,match}`` through the real ``medvlp`` entry point."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

main_mod = pytest.importorskip("medvlp.cli.main", reason="medvlp.cli.main (the medvlp command) not importable")
runner = CliRunner()


def run(*args: str):
    result = runner.invoke(main_mod.app, ["ontology", *args])
    return result


def test_stats_bundled_and_json(tmp_path):
    res = run("stats", "cxr")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    from medvlp.ontology import load_ontology

    s = load_ontology("cxr").stats()
    assert f"concepts: {s['concepts']}" in lines and f"synonyms: {s['synonyms']}" in lines
    assert f"roots: {s['roots']}" in lines and "skipped: 0" in lines
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"concepts": [{"id": "x:a", "name": "a", "parents": ["x:zz"]},
                                            {"id": "x:a", "name": "a2"}, {"id": "x:b", "name": "b"}]}, indent=1))
    res = run("stats", str(bad))
    assert res.exit_code == 0, res.output
    assert "concepts: 2" in res.output and "skipped: 2" in res.output
    assert "1 dangling parent" in res.output and "1 duplicate id" in res.output
    # json.dumps(indent=1) puts the first "id" on line 4 and the duplicate on line 11
    assert f"{bad}:4: x:a: parent 'x:zz' is not defined; is-a edge dropped" in res.output
    assert f"{bad}:11: concepts[1] ('x:a'): duplicate id (first defined at line 4)" in res.output


def test_stats_obo(hpo_path, hpo_graph):
    res = run("stats", str(hpo_path))
    assert res.exit_code == 0, res.output
    assert f"concepts: {len(hpo_graph)}" in res.output.splitlines()
    assert "roots: 1" in res.output and "obsolete terms" in res.output


def test_search_show_match():
    res = run("search", "pleural effusion", "--ontology", "cxr", "--limit", "3")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert len(lines) == 3 and lines[0].startswith("cxr:pleural_effusion\tpleural effusion\t(")
    res = run("show", "cxr:pleural_effusion", "--ontology", "cxr")
    assert res.exit_code == 0, res.output
    assert "name: pleural effusion" in res.output and "parents: cxr:pleural_abnormality" in res.output
    assert "children: " in res.output and "cxr:empyema (empyema)" in res.output
    text = "No pneumothorax. Possible left lower lobe pneumonia; small right pleural effusion."
    res = run("match", text, "--ontology", "cxr")
    assert res.exit_code == 0, res.output
    rows = [line.split("\t") for line in res.output.splitlines()]
    assert rows[0][:4] == ["3-15", "cxr:pneumothorax", "pneumothorax", "negated: true"]
    pneumonia = next(r for r in rows if r[1] == "cxr:pneumonia")
    assert pneumonia[0] == "42-51" and pneumonia[3:5] == ["negated: false", "uncertain: true"]
    assert all(r[3] in ("negated: true", "negated: false") for r in rows)


def test_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main_mod.main(["ontology", "show", "cxr:not_a_concept", "--ontology", "cxr"])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown concept id 'cxr:not_a_concept'" in err[0]
    with pytest.raises(SystemExit) as exc:
        main_mod.main(["ontology", "stats", "no_such_graph"])
    assert exc.value.code == 1 and "no ontology 'no_such_graph'" in capsys.readouterr().err
