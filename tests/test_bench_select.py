"""`unet bench select`'s check: planning measured in this process in CPU seconds, both sides in
alternating order after one unmeasured run of each, each on a fresh output; the rules really ran."""
from __future__ import annotations

import os

from jobs.bench import selecting


def test_in_process_planning_runs_the_rules_in_alternating_order_on_fresh_outputs(tmp_path, monkeypatch):
    archive = str(tmp_path / "archive")
    selecting.write_archive(archive, 1)  # one study, 136 objects
    calls: list[tuple[str, bool]] = []
    measure = selecting.plan_in_process

    def recorded(archive_: str, out: str, rules):
        p = measure(archive_, out, rules)
        calls.append((os.path.basename(out), rules is not None))
        return p

    monkeypatch.setattr(selecting, "plan_in_process", recorded)
    runs = selecting.paired(archive, str(tmp_path / "work"), selecting.CHEST, pairs=2)
    sides = [with_rules for _, with_rules in calls]
    assert sides == [False, True, False, True, True, False]  # warm-ups, then without-with, with-without
    assert len(runs["without"]) == len(runs["with"]) == 2
    without, with_rules = runs["without"][0], runs["with"][0]
    assert without.cpu_s > 0 and with_rules.cpu_s > 0
    # one_per_study: thinnest keeps one volume per study; without rules every volume is planned
    assert with_rules.todo == 1 < without.todo


def test_planning_deletes_only_the_output_it_made_itself(tmp_path):
    """--workdir may hold a user's folders, even ones named as the bench's were: planning makes a
    folder of its own under it and removes that one only."""
    archive = str(tmp_path / "archive")
    selecting.write_archive(archive, 1)
    work = tmp_path / "work"
    for name in ("warm-with", "in-process-without", "plan-mine"):
        (work / name).mkdir(parents=True)
        (work / name / "keep.txt").write_text("the user's")
    assert selecting.plan_in_process(archive, str(work), selecting.CHEST).todo == 1
    assert sorted(os.listdir(work)) == ["in-process-without", "plan-mine", "warm-with"]
    assert all((work / n / "keep.txt").read_text() == "the user's" for n in os.listdir(work))
