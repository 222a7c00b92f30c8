"""kvrl on Ray clusters: `ray job submit` against a local head with the job server, and a 2-node cluster
(``ray.cluster_utils.Cluster``) with rollout engines on one node and learner ranks on the other."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.helpers import BIN, ROOT, RayHead, free_port

TINY_RUN = [
    "trainer.iterations=2",
    "trainer.prompts_per_iteration=4",
    "rollout.sampling.n=2",
    "rollout.sampling.max_tokens=16",
    "rollout.chunk_size=8",
    "tracking.wandb=disabled",
]


@pytest.fixture
def job_server(tmp_path):
    """A Ray head of its own with the job server on localhost, token authentication on, stopped (only
    it) after: this test is about submitting to a cluster, so it does not use the session's."""
    dashboard = free_port()
    head = RayHead.start(tmp_path, num_cpus=8, dashboard_port=dashboard)
    try:
        yield f"http://127.0.0.1:{dashboard}", head.env
    finally:
        head.stop()


def ray_cli(env, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_ray_job_submit_runs_tiny_rl(job_server, tiny_dir, tmp_path):
    address, env = job_server
    for _ in range(60):  # the job server answers a few seconds after the head is up
        if ray_cli(env, "job", "list", "--address", address).returncode == 0:
            break
        time.sleep(2)
    else:
        pytest.fail("the job server did not answer in 120 s: " + (tmp_path / "head.log").read_text()[-3000:])
    run = tmp_path / "run"
    for _ in range(30):  # the job agent may need a few more seconds than the server ("try again later")
        submit = ray_cli(
            env,
            "job", "submit", "--address", address, "--working-dir", str(ROOT), "--no-wait", "--",
            "kvrl", "rl", "--config", "configs/tiny/rl.yaml", f"model={tiny_dir}",
            f"trainer.output_dir={run}", *TINY_RUN,
        )  # fmt: skip
        if submit.returncode == 0 or "try again" not in submit.stderr:
            break
        time.sleep(2)
    assert submit.returncode == 0, submit.stderr
    job_id = re.search(r"raysubmit_\w+", submit.stdout + submit.stderr).group(0)
    deadline, status = time.time() + 800, ""
    while time.time() < deadline:
        proc = ray_cli(env, "job", "status", "--address", address, job_id)
        status = (proc.stdout + proc.stderr).lower()  # "Job '...' succeeded", on stderr
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(5)
    logs = ray_cli(env, "job", "logs", "--address", address, job_id).stdout
    assert "succeeded" in status, status + logs[-3000:]
    assert f"kvrl rl: run dir {run}" in logs and "RL iterations" in logs  # the run dir and progress
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(r["rollout_tokens_per_s"] > 0 and r["time_sync"] > 0 for r in rows)
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_00001"


TWO_NODES = """
import json, sys
from ray.cluster_utils import Cluster

if __name__ == "__main__":
    tiny, out = sys.argv[1], sys.argv[2]
    store = 200 * 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 3, "resources": {"rollout_node": 2, "head_node": 1}, "object_store_memory": store
        },
    )
    learner_node = cluster.add_node(num_cpus=3, resources={"learner_node": 2}, object_store_memory=store)
    cluster.wait_for_nodes()
    import ray
    from runkit.config import load_config
    from rl.trainer import RLConfig, Trainer, train
    from runkit.lifecycle import RunStopped

    overrides = [
        f"model={tiny}", f"trainer.output_dir={out}", f"resources.ray_address={cluster.address}",
        "resources.rollout_resources={rollout_node: 1}", "resources.learner_resources={learner_node: 1}",
        "resources.reward_resources={head_node: 1}",  # the verifiers stay when the learners' node goes
        *sys.argv[3:],
    ]
    trainer = Trainer(load_config(RLConfig, "configs/tiny/rl.yaml", overrides))
    trainer.start()
    where = {
        "head": cluster.head_node.node_id,
        "learner_node": learner_node.node_id,
        "rollout": ray.get([a.node_id.remote() for a in trainer.pool.actors]),
        "learner": ray.get([a.node_id.remote() for a in trainer.learners.actors]),
        "cluster": trainer.cluster,
    }
    trainer.fit()
    trainer.close()
    print("WHERE " + json.dumps(where))

    # The learners' node is lost while a resumed run is up: it must stop with a clear message.
    resumed = load_config(RLConfig, "configs/tiny/rl.yaml", [*overrides, f"trainer.resume={out}",
                                                              "trainer.iterations=4"])
    try:
        train(resumed, on_start=lambda _: cluster.remove_node(learner_node))
        print("STOPPED null")
    except RunStopped as e:
        print("STOPPED " + json.dumps(str(e)))
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow
def test_two_nodes_rollout_on_one_learners_on_the_other_then_that_node_is_lost(
    tiny_dir, signal_data, tmp_path
):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(signal_data), str(ROOT)])  # the verifier plugin, everywhere
    data = f"data.path={signal_data / 'train.jsonl'}"
    proc = subprocess.run(
        [sys.executable, "-c", TWO_NODES, str(tiny_dir), str(tmp_path / "run"), *TINY_RUN, data],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    where = json.loads(proc.stdout.split("WHERE ", 1)[1].splitlines()[0])
    assert where["cluster"].split(": ")[1].startswith("2 node(s)")
    assert where["rollout"] == [where["head"]] * 2  # both engines on the rollout node
    assert where["learner"] == [where["learner_node"]] * 2  # both ranks on the other one
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Iteration 1 samples from weights synced across nodes: the engines' log-probs of their own samples
    # match the learner's (the learner's weights after iteration 0's update), so the sync arrived whole.
    assert rows[1]["time_sync"] > 0 and rows[0]["loss"] != 0 and rows[0]["kl"] > 0
    assert rows[1]["rollout_learner_logprob_gap_max"] < 1e-3

    stopped = json.loads(proc.stdout.split("STOPPED ", 1)[1].splitlines()[0])
    run = tmp_path / "run"
    print(f"\nlearner node lost: {stopped}")
    assert stopped and "an actor died" in stopped and f"continue with trainer.resume={run}" in stopped
    assert f"The last checkpoint is {run / 'checkpoints' / 'iter_00001'}" in stopped
    assert (
        json.loads((run / "checkpoints" / "iter_00001" / "trainer_state.json").read_text())["iteration"] == 1
    )
