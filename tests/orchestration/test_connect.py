"""What the driver adds to the job's runtime env: forwarded variables and the address hook, never a
field or variable the submitted job already sets (Ray refuses the driver's ``ray.init`` otherwise)."""

from __future__ import annotations

import json

from orchestration.connect import _runtime_env, worker_env

HOOK = "orchestration.worker_setup.pin_cluster_address"


def test_outside_a_job_everything_is_added(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    env = _runtime_env()
    assert env["worker_process_setup_hook"] == HOOK
    assert env["env_vars"]["HF_TOKEN"] == "hf_secret" and env["env_vars"]["AWS_ACCESS_KEY_ID"] == "key"
    assert env["env_vars"]["OMP_NUM_THREADS"] == "1" and "AWS_SECRET_ACCESS_KEY" not in env["env_vars"]
    assert env["env_vars"] == worker_env()


def test_inside_a_job_the_jobs_own_settings_win(monkeypatch):
    job = {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": "2", "HF_TOKEN": "from-job"}, "working_dir": "gcs://x",
                           "worker_process_setup_hook": "mine.setup"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    monkeypatch.setenv("HF_TOKEN", "hf_driver")
    monkeypatch.setenv("HF_HOME", "/data/hf")
    env = _runtime_env()
    assert "worker_process_setup_hook" not in env
    assert "OMP_NUM_THREADS" not in env["env_vars"] and "HF_TOKEN" not in env["env_vars"]
    assert env["env_vars"]["HF_HOME"] == "/data/hf"
