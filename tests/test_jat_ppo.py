"""The JAX PPO behind the MuJoCo experts: it learns InvertedPendulum, and the recorder plays it."""

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines.jat import experts, ppo, record
from mgdt_jax.envs import gym_tasks
from mgdt_jax.recipes.jat import fields as jat_fields
from mgdt_jax.recipes.jat import references

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def pendulum_expert(tmp_path_factory):
    """A PPO policy trained for 8k steps (4 updates): it holds the pole tens of steps, random play ~5."""
    experts = tmp_path_factory.mktemp("experts")
    config = dataclasses.replace(ppo.TASK_CONFIGS["mujoco-pendulum"], total_steps=8_192)
    trained = ppo.train("InvertedPendulum-v5", config, seed=0, progress=False)
    ppo.save(experts / "mujoco-pendulum.npz", trained, "InvertedPendulum-v5",
             references.installed_versions(("gymnasium", "mujoco")), config, seed=0)
    return experts


def test_recorded_pendulum_expert_beats_random(pendulum_expert, tmp_path):
    summary = record.record_task(gym_tasks.get_task("mujoco-pendulum"), tmp_path, episodes=3, random_episodes=10,
                                 experts_dir=pendulum_expert)
    stored = references.load(tmp_path / "mujoco-pendulum")
    assert stored.expert.mean_return > 5 * stored.random.mean_return > 0
    assert stored.versions == references.installed_versions(("gymnasium", "mujoco"))
    assert summary["episodes"] == 3
    source = tfds.builder_from_directory(tmp_path / "mujoco-pendulum").as_data_source("train")
    fields = jat_fields.episode_fields(source[0])
    assert set(fields) == {"continuous_observations", "continuous_actions", "rewards"}
    assert fields["continuous_observations"].shape == (len(fields["rewards"]), 4)
    assert fields["continuous_actions"].shape == (len(fields["rewards"]), 1)
    assert np.abs(fields["continuous_actions"]).max() <= 3.0  # InvertedPendulum's action bound
    assert fields["rewards"].sum() == pytest.approx(float(source[0]["episode_return"]))


def test_expert_of_another_env_or_version_is_refused(pendulum_expert):
    versions = references.installed_versions(("gymnasium", "mujoco"))
    with pytest.raises(experts.ExpertError, match="trained on InvertedPendulum-v5 .* not Swimmer-v5"):
        ppo.load(pendulum_expert / "mujoco-pendulum.npz", "Swimmer-v5", versions)
    with pytest.raises(experts.ExpertError, match="remove it to train a new expert"):
        ppo.load(pendulum_expert / "mujoco-pendulum.npz", "InvertedPendulum-v5", {**versions, "mujoco": "3.2.7"})




def test_expert_samples_its_gaussian_around_the_mean_repeatably(pendulum_expert):
    versions = references.installed_versions(("gymnasium", "mujoco"))
    path = pendulum_expert / "mujoco-pendulum.npz"
    observation = np.array([0.01, -0.02, 0.05, 0.1])
    expert = ppo.load(path, "InvertedPendulum-v5", versions, seed=3)
    actions = np.stack([expert.act(observation) for _ in range(4000)])
    with np.load(path) as content:
        std = np.exp(content["log_std"])
    assert actions.mean(0) == pytest.approx(expert.mean_action(observation), abs=float(4 * std.max() / np.sqrt(4000)))
    assert actions.std(0) == pytest.approx(std, rel=0.05)
    again = ppo.load(path, "InvertedPendulum-v5", versions, seed=3)
    np.testing.assert_array_equal(actions[:5], np.stack([again.act(observation) for _ in range(5)]))


def test_expert_saved_without_its_log_std_is_refused(pendulum_expert, tmp_path):
    with np.load(pendulum_expert / "mujoco-pendulum.npz") as content:
        arrays = {name: content[name] for name in content.files if name != "log_std"}
    np.savez(tmp_path / "mujoco-pendulum.npz", **arrays)
    with pytest.raises(experts.ExpertError, match="without its policy's log std .* remove it to train a new expert"):
        ppo.load(tmp_path / "mujoco-pendulum.npz", "InvertedPendulum-v5",
                 references.installed_versions(("gymnasium", "mujoco")))
