"""`compare --tune`: equal validation-only searches per method, pruning, the best settings
over the seeds beside the defaults, and the leaderboard's statistics."""

import json
from pathlib import Path

import pytest
import tiny

from peftlab.cli import main
from peftlab.comparison import tuning
from peftlab.methods.registry import METHODS


def test_tune_searches_each_method_on_validation_then_runs_the_best_over_seeds(
    tuned_comparison,
):
    out = tuned_comparison
    board = json.loads((out / "compare.json").read_text())
    for method in ("lora", "ia3"):
        search = board["searches"][method]
        # The same number of trials per method, at the planned Latin hypercube points.
        assert len(search["trials"]) == 3
        lrs = sorted(t["params"]["lr"] for t in search["trials"])
        r = tuning.LEARNING_RATES[method]
        assert all(r.low <= lr <= r.high for lr in lrs) and len(set(lrs)) == 3
        # Tuning trials never looked at the test split, and saved no adapter.
        for n in range(3):
            record = json.loads((out / "tune" / f"{method}-trial{n}" / "run.json").read_text())
            assert "before" not in record and "after" not in record
            assert record["status"] in ("done", "pruned")
            assert not (out / "tune" / f"{method}-trial{n}" / "adapter").exists()
        finished = [t for t in search["trials"] if t["state"] == "COMPLETE"]
        best = max(finished, key=lambda t: t["value"])
        assert search["best_params"] == best["params"]
        # The final tuned runs used the best rate; the default runs the method's own.
        row = next(r for r in board["rows"] if r["method"] == method)
        assert row["variant"] == "tuned" and row["seeds"] == [0, 1]
        assert row["lr"] == best["params"]["lr"]
        # Trial 0 is the method's default settings: the pick is never worse on validation.
        default_lr = METHODS[method].default_lr
        assert search["trials"][0]["params"] == {"lr": default_lr}
        assert row["default"]["lr"] == default_lr
        assert best["value"] >= search["trials"][0]["value"]
        ci = row["accuracy_ci"]
        assert ci[0] <= row["accuracy"] <= ci[1] and row["ci_over"] == "seeds"
    assert board["rows"][0]["tied_with_best"] is True
    assert board["recommendation"]["text"].startswith("Best accuracy: ")
    html = (out / "compare.html").read_text()
    assert 'id="recommendation"' in html and 'id="tuning"' in html and 'id="spaces"' in html
    assert (out / "search.png").is_file() and (out / "pareto.png").is_file()
    assert "lr=" in (out / "compare.md").read_text()


def test_latin_hypercube_puts_one_trial_in_each_stratum():
    r = tuning.Range(1e-4, 1e-2)
    points = tuning.latin_hypercube({"lr": r, "lora_r": tuning.FIELDS["lora_r"][1]}, 5, seed=3)
    import math

    strata = sorted(int(5 * math.log(p["lr"] / 1e-4) / math.log(100)) for p in points)
    assert strata == [0, 1, 2, 3, 4]
    assert all(isinstance(p["lora_r"], int) and 2 <= p["lora_r"] <= 64 for p in points)
    assert points == tuning.latin_hypercube({"lr": r, "lora_r": tuning.FIELDS["lora_r"][1]}, 5, 3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tune", "lr", "--trials", "1"], "--trials 1: a search needs 2 trials or more"),
        (["--trials", "3"], "give --tune too"),
        (["--tune", "epochs"], "--tune epochs: not tunable"),
        (["--tune", "adapter_size"], "none of the methods uses it"),
        (["--tune", "lr", "--lr", "1e-3"], "drop --lr"),
        (["--score-on", "validation"], "drop --score-on"),
    ],
)
def test_bad_tuning_requests_are_one_line(
    tiny_bert, sentiment_csv, tmp_path, capsys, extra, message
):
    argv = ["compare", "--methods", "lora", *tiny.where(tiny_bert, sentiment_csv, tmp_path / "o")]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err


def test_pruner_stops_a_trial_behind_the_startup_trials_at_a_rung():
    import optuna

    from peftlab.comparison.study import make_pruner

    study = optuna.create_study(direction="maximize", pruner=make_pruner())
    verdicts = []
    for scores in ([0.9, 0.9, 0.9], [0.2, 0.3, 0.4], [0.5, 0.6, 0.7], [0.95, 0.96, 0.97]):
        trial = study.ask()
        pruned = False
        for step, score in enumerate(scores, start=1):
            trial.report(score, step)
            if trial.should_prune():
                pruned = True
                break
        study.tell(trial, state=optuna.trial.TrialState.PRUNED) if pruned else study.tell(
            trial, scores[-1]
        )
        verdicts.append(pruned)
    # The two startup trials always finish, however poor; then a trial must be in the
    # best third at its rung: 0.5 at validation 1 is not, 0.95 is.
    assert verdicts == [False, False, True, False]


def test_a_default_outside_its_range_widens_the_range_it_is_searched_and_reported_in():
    from types import SimpleNamespace

    from peftlab.comparison.compare import Tuning, plan_search, searched_ranges
    from peftlab.config import RunConfig

    cfg = RunConfig()
    cfg.train.weight_decay = 0.5  # the shared range is [0, 0.1]
    trials = plan_search(cfg, "lora", Tuning(["lr", "weight_decay"], trials=3), seed=0)
    assert trials[0]["params"] == {"lr": METHODS["lora"].default_lr, "weight_decay": 0.5}
    assert all(0.0 <= t["params"]["weight_decay"] <= 0.5 for t in trials)
    ranges = searched_ranges("lora", [SimpleNamespace(user_attrs=t) for t in trials])
    assert ranges["weight_decay"]["range"] == "uniform [0, 0.5]"
    assert ranges["lr"]["range"] == "log-uniform [0.0001, 0.01]"
    assert ranges["lr"]["source"] == tuning.LEARNING_RATES["lora"].source


def test_comparison_plots_say_what_they_show(tuned_comparison, tiny_llama, monkeypatch):
    """Every plot of a comparison is titled with the model, data, sizes and seeds, its
    axes labelled, its legend outside the axes (covering no point)."""
    from peftlab.comparison import compare_report

    out = tuned_comparison
    board = json.loads((out / "compare.json").read_text())
    records = [json.loads(p.read_text()) for d in board["rows"] for p in
               (Path(run) / "run.json" for run in d["run_dirs"])]  # fmt: skip
    drawn = {}
    monkeypatch.setattr(compare_report, "save_figure", lambda fig, p: drawn.update({p.name: fig}))
    compare_report.write_compare_report(board, records, out)
    assert set(drawn) == {*compare_report.PLOTS, "search.png"}
    about = compare_report.subject(board, records)
    assert about.startswith(f"{tiny_llama.name}, sentiment.csv: ") and about.endswith("2 seed(s)")
    for name, fig in drawn.items():
        titles = [ax.get_title() for ax in fig.axes] + [fig.get_suptitle()]
        assert any(about in title for title in titles), name
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is None, name


def test_a_worker_waits_for_a_tuned_run_whose_search_just_ended(tmp_path, monkeypatch):
    """The race a busy machine found: this worker looks, the tuned run is not ready (its
    search is still running elsewhere); the other worker then finishes the search. With
    nothing running any more, a worker that stopped at "nothing running" left the tuned
    run waiting for nobody and reported the comparison without it."""
    from optuna.trial import TrialState

    from peftlab.comparison import study as studies
    from peftlab.comparison import workers

    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = studies.open_storage(url)
    final = studies.create_study(storage, "peftlab-compare-x", 30.0)
    search = studies.create_study(storage, "peftlab-compare-x-tune-lora", 30.0)
    final.set_user_attr("searches", {"lora": search.study_name})
    studies.enqueue(search, [{"name": "tune/lora-trial0"}])
    studies.enqueue(final, [{"name": "lora-seed0", "tuned_from": "lora"}])
    comparison = workers.Comparison.open(url, storage, final, tmp_path)
    search_trial = studies.claim(comparison.searches["lora"], storage)  # another worker's

    real_claim, looks = workers.Comparison.claim, []

    def claim_then_the_search_ends(self):
        looks.append(real_claim(self))
        if len(looks) == 1:  # the other worker finishes right after this one looked
            studies.finish(storage, search_trial, {"value": 0.9})
        return looks[-1]

    ran = []

    def run_trial(comparison, study, trial_id, *_):
        ran.append(storage.get_trial(trial_id).user_attrs["name"])
        studies.finish(storage, trial_id, {"value": 0.8})

    monkeypatch.setattr(workers.Comparison, "claim", claim_then_the_search_ends)
    monkeypatch.setattr(workers, "run_trial", run_trial)
    monkeypatch.setattr(workers, "POLL_S", 0.01)
    assert workers.work_loop(comparison, 1, None, log=lambda _: None) == 1
    assert looks[0] is None and ran == ["lora-seed0"]
    assert {t.state for t in final.trials} == {TrialState.COMPLETE}
