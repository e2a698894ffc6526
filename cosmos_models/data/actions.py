"""Robot actions of the action-conditioned model from the official annotation files.

An annotation is the Bridge-style JSON of the official action-conditioned post-training
(DATASET/annotations/<name>.json beside DATASET/videos/<name>.mp4, or <name>.json beside the video):

    "state":                    (T, 6) end-effector pose per video frame: x, y, z, roll, pitch, yaw
    "continuous_gripper_state": (T,)   gripper per frame, 0 open .. 1 closed
    "action":                   (T, 7) optional, used only when "state" is absent

The model's action between frames k−1 and k is computed from the states as the official loader
does: the position change in the previous gripper frame, R_{k−1}ᵀ (p_k − p_{k−1}), the rotation
change R_{k−1}ᵀ R_k as roll, pitch, yaw, both times ACTION_SCALE (20, the official Bridge
`action_scaler`), and the gripper state of frame k times GRIPPER_SCALE (1). Euler angles are the
static-axes x-y-z convention, R = Rz(yaw) · Ry(pitch) · Rx(roll). A clip of frames f_0 … f_{n−1}
(source frame indices) gets the n − 1 actions of those states, so a clip resampled to another frame
rate still gets the motion between the frames it shows.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import torch

ACTION_SCALE = 20.0
GRIPPER_SCALE = 1.0
ACTION_DIM = 7
ANNOTATIONS_DIR = "annotations"


class ActionFileError(ValueError):
    """An annotation file that cannot give actions (missing field, wrong shape, non-finite)."""


def euler_to_matrix(rpy: np.ndarray) -> np.ndarray:
    """(..., 3) roll, pitch, yaw -> (..., 3, 3) rotation Rz(yaw) Ry(pitch) Rx(roll)."""
    r, p, y = rpy[..., 0], rpy[..., 1], rpy[..., 2]
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.stack([
        np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1),
        np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1),
        np.stack([-sp, cp * sr, cp * cr], -1),
    ], -2)


def matrix_to_euler(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) roll, pitch, yaw, the inverse of euler_to_matrix (pitch in [−π/2, π/2])."""
    pitch = np.arcsin(np.clip(-m[..., 2, 0], -1.0, 1.0))
    roll = np.arctan2(m[..., 2, 1], m[..., 2, 2])
    yaw = np.arctan2(m[..., 1, 0], m[..., 0, 0])
    return np.stack([roll, pitch, yaw], -1)


def actions_from_states(states: np.ndarray, gripper: np.ndarray) -> np.ndarray:
    """(n, 6) poses and (n,) gripper states -> (n − 1, 7) scaled actions (module docstring)."""
    rot = euler_to_matrix(states[:, 3:6])
    prev_t = np.swapaxes(rot[:-1], -1, -2)
    rel_xyz = np.einsum("nij,nj->ni", prev_t, states[1:, :3] - states[:-1, :3])
    rel_rpy = matrix_to_euler(prev_t @ rot[1:])
    return np.concatenate([rel_xyz * ACTION_SCALE, rel_rpy * ACTION_SCALE, gripper[1:, None] * GRIPPER_SCALE], 1)


def _array(data: dict, key: str, shape_tail: tuple[int, ...], path: str) -> np.ndarray:
    try:
        value = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise ActionFileError(f"{path}: {key!r} is not a list of numbers") from None
    if value.ndim != 1 + len(shape_tail) or value.shape[1:] != shape_tail or len(value) < 2:
        want = "(T" + "".join(f", {d}" for d in shape_tail) + ")"
        raise ActionFileError(f"{path}: {key!r} has shape {value.shape}; expected {want} with T >= 2 frames")
    if not np.isfinite(value).all():
        raise ActionFileError(f"{path}: {key!r} holds NaN or Inf values")
    return value


class Annotation:
    """One annotation file: per-frame states (or given actions), validated once."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ActionFileError(f"{self.path}: cannot read it as JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ActionFileError(f"{self.path}: expected a JSON object with \"state\" and "
                                  "\"continuous_gripper_state\" (or \"action\")")
        if "state" in data:
            if "continuous_gripper_state" not in data:
                raise ActionFileError(f"{self.path}: has \"state\" but no \"continuous_gripper_state\"")
            states = _array(data, "state", (6,), self.path)
            gripper = _array(data, "continuous_gripper_state", (), self.path)
            if len(gripper) != len(states):
                raise ActionFileError(f"{self.path}: \"state\" has {len(states)} frames but "
                                      f"\"continuous_gripper_state\" {len(gripper)}; they must match")
            self.states, self.gripper, self.actions = states, gripper, None
        elif "action" in data:
            self.states = self.gripper = None
            self.actions = _array(data, "action", (ACTION_DIM,), self.path)
        else:
            raise ActionFileError(f"{self.path}: no \"state\" (with \"continuous_gripper_state\") and no \"action\"")

    @property
    def frames(self) -> int:
        return len(self.states if self.states is not None else self.actions)

    def clip_actions(self, frame_ids) -> torch.Tensor:
        """The (n − 1, 7) float32 actions between the clip's source frames frame_ids (n of them)."""
        ids = np.asarray(frame_ids, dtype=np.int64)
        if ids.min() < 0 or ids.max() >= self.frames:
            raise ActionFileError(f"{self.path}: has {self.frames} frames; the clip needs frame {int(ids.max())}")
        if self.states is not None:
            out = actions_from_states(self.states[ids], self.gripper[ids])
        else:  # given per-frame actions: the action recorded at each step of the clip
            out = self.actions[ids[:-1]]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def annotation_path(video_path: str) -> str | None:
    """The annotation of a video: DATASET/annotations/<rel>.json for DATASET/videos/<rel>.mp4, else
    <name>.json beside it; None if neither exists."""
    stem = os.path.splitext(os.path.abspath(video_path))[0]
    head, parts = stem, []
    while True:  # the nearest "videos" folder above the file
        head, tail = os.path.split(head)
        if not tail:
            break
        parts.insert(0, tail)
        if os.path.basename(head) == "videos":
            candidate = os.path.join(os.path.dirname(head), ANNOTATIONS_DIR, *parts) + ".json"
            if os.path.isfile(candidate):
                return candidate
            break
    return stem + ".json" if os.path.isfile(stem + ".json") else None


def source_frame_ids(start: float, num_frames: int, fps: float, period: float) -> list[int]:
    """The source frame indices a clip of num_frames at fps from `start` seconds shows (nearest frame,
    as clips.decode_clip picks them; period = one source frame)."""
    return [int(math.floor((start + k / fps) / period + 0.5)) for k in range(num_frames)]


def _tensor_file(path: str) -> torch.Tensor:
    """The actions tensor of a .npy / .safetensors / torch file (one tensor, or the one named "actions")."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--actions {path!r}: no such file")
    try:
        if path.endswith(".npy"):
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            obj = load_file(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - each format fails in its own way
        raise ActionFileError(f"--actions {path}: cannot load it ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, torch.Tensor):
        return obj
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if "actions" in tensors or len(tensors) == 1:
        return tensors.get("actions", next(iter(tensors.values())))
    raise ActionFileError(f"--actions {path}: holds no single tensor and none named 'actions'")


def load_actions(path: str, per_chunk: int) -> tuple[torch.Tensor, str | None]:
    """Actions for `cosmos sample --actions`: an annotation .json (the whole episode's actions at its
    frame rate, cut to whole chunks of per_chunk; a note says what was cut) or a tensor file."""
    if not str(path).lower().endswith(".json"):
        return _tensor_file(os.fspath(path)), None
    ann = Annotation(path)
    actions = ann.clip_actions(range(ann.frames))
    whole = len(actions) // per_chunk * per_chunk
    if whole == 0:
        raise ActionFileError(f"{path}: {ann.frames} frames give {len(actions)} actions; one chunk needs {per_chunk} "
                              f"({per_chunk + 1} frames)")
    note = None if whole == len(actions) else (f"--actions {path}: used the first {whole} of its {len(actions)} actions "
                                               f"(whole chunks of {per_chunk})")
    return actions[:whole], note
