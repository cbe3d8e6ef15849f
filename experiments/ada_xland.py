"""AdA on XLand-MiniGrid with ``mgdt-train``: the meta-RL claim's setting (R1-9x9, 5 trials, grid
views, PPO) at the size of its first sweep, on a benchmark generated here beforehand.

    mgdt-xland-benchmark --preset trivial --count 2000 --out runs/xland/trivial_2000.pkl.bz2
    mgdt-train --config experiments/ada_xland.py --workdir runs/ada_xland
    mgdt-ada-eval --workdir runs/ada_xland --trials 5 --out runs/ada_xland/eval

``--config.env.benchmark=PATH`` points at another benchmark, ``--config.model.agent=gru
--config.model.gru_hidden=128`` trains the claim's GRU RL² baseline (``ada_claims.MODELS["gru"]``:
the other sizes are the Transformer-XL's), ``--config.train.num_steps`` sets the PPO steps (128
environments x 32 steps each).
The claims themselves (both agents, the task settings of docs/ada.md) run with experiments/ada_claims.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from experiments.ada_claims import FULL, run_config

if TYPE_CHECKING:
    from ml_collections import ConfigDict

BENCHMARK = Path("runs/xland/trivial_2000.pkl.bz2")  # mgdt-xland-benchmark's --out above


def get_config() -> ConfigDict:
    scale = FULL["meta-rl"]
    return run_config("trxl", BENCHMARK, scale, scale.train_steps)
