"""The run store: atomic tables, round completion, truncation of a killed round's leftovers."""

from __future__ import annotations

from orchestration.store import RunStore


def _row(k: int, cid: str) -> dict:
    return {"round": k, "config_id": cid, "role": "train", "knobs": [0] * 5, "avg_bits": 3.0, "loss": 0.5,
            "accuracy": 0.8, "perplexity": None, "status": "ok", "error": None, "seconds": 1.0, "actor": "a"}


def _round(k: int) -> dict:
    return {"round": k, "hypervolume": 0.5, "hv_train": 0.4, "set_size": 3, "evaluated": 4, "failed": 0,
            "train_loss": 0.6, "train_steps": 5, "train_seconds": 1.0, "eval_seconds": 1.0, "search_seconds": 1.0}


def test_rounds_mark_completion_and_truncate_drops_leftovers(tmp_path):
    store = RunStore(tmp_path / "run")
    store.append_round([_row(0, "a"), _row(0, "b")], _round(0))
    store.append_round([_row(1, "a")], _round(1))
    assert store.completed_rounds() == 2
    # A killed round 2 left files behind.
    for d in (store.checkpoint_dir(2), store.search_dir(2), store.ray_train_dir / "x-round2",
              store.ray_train_dir / "x-round1"):
        d.mkdir()
        (d / "f").write_text("x")
    store.write_trainset(2, {"trainset": []})
    store.truncate_to(2)
    assert not store.checkpoint_dir(2).exists() and not store.search_dir(2).exists()
    assert not store.trainset_path(2).exists() and not (store.ray_train_dir / "x-round2").exists()
    assert (store.ray_train_dir / "x-round1").exists()
    # Re-appending round 1 replaces it rather than duplicating it.
    store.append_round([_row(1, "c")], _round(1))
    assert [r["config_id"] for r in store.read_archive()] == ["a", "b", "c"]
    assert [r["round"] for r in store.read_rounds()] == [0, 1]
    assert not list((tmp_path / "run").glob(".*.parquet.*"))  # no temporary files left
