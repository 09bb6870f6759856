"""orbax checkpoints of the train state and the data position, under `workdir/checkpoints/<step>/`.

Each checkpoint holds two items: "state" (step, trainable params, optimizer state, RNG key — the frozen
LoRA base is not saved, it is `init_from`) and "data" (the loader's JSON position). orbax writes into a
temporary directory and renames it when complete, so a crash never leaves a checkpoint that looks whole;
the last `keep` are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

SAVED_KEYS = ("step", "params", "opt_state", "rng")


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
            item_names=("state", "data"),
        )

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def save(self, step: int, state: dict[str, Any], data_state: dict[str, Any]) -> None:
        saved = {k: state[k] for k in SAVED_KEYS}
        self.mngr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(saved), data=ocp.args.JsonSave(data_state)),
            force=True,
        )

    def restore(self, step: int, state: dict[str, Any], shardings: dict[str, Any]):
        """(state with the saved parts replaced, data position). `state` gives shapes and dtypes."""
        target = {
            k: jax.tree.map(
                lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state[k], shardings[k]
            )
            for k in SAVED_KEYS
        }
        out = self.mngr.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()),
        )
        return {**state, **out["state"]}, out["data"]

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()
