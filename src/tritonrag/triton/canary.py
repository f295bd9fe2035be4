"""Canary routing: which generator version serves a request, under weights that change at run time.

The split is a `RoutingConfig`: a stable version, an optional canary version, the canary's
share of traffic and the share mirrored to it in shadow mode. A request is routed by
`choose()`:

1. a pinned version (the request's `model_version` input) wins;
2. with a routing key (a user or session id), `sticky_fraction(key)`, a stable hash of the
   key to [0, 1), is compared with the canary weight: the same key always lands on the same
   version while the weights stand, and raising the weight only moves keys *to* the canary
   (a key with fraction f is on the canary exactly when f < weight);
3. without a key, a random draw is compared with the weight.

A request served by the stable version is also mirrored to the canary with probability
`shadow_weight` (its output discarded by the router; the canary records its metrics).

The config lives in a JSON file (`WeightsFile`), re-read whenever the file changes, so
weights change without restarting or reloading anything and in-flight streams are never
touched: routing decides once per request, at its start. Writers replace the file
atomically (`write_config`), so a reader sees the old or the new split, never half of one.
Every replica reading the same file routes alike: the split is the file, the key hash is
the same everywhere, and each request stats the file (a change is seen by the next request).

The file's path comes from `TRITONRAG_CANARY_FILE` when set (a mounted Kubernetes
ConfigMap, say), else from the router's `weights_file` parameter. It is kept as given, not
resolved: a ConfigMap mount is `canary.json -> ..data/canary.json` with `..data` a symlink
the kubelet swaps atomically to a new timestamped folder (and then deletes the old one), so
a path resolved once would keep pointing at the deleted folder. stat() follows the links
on every call, sees the new file's inode, and the router re-reads it.

The file may also hold a guarded rollout's state (`rollout`, tritonrag.triton.rollout):
its step, guards and decisions live beside the split they set, so every replica and any
restarted driver read the same story.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tritonrag.errors import InvalidInput, Unavailable

MODES = ("pinned", "sticky", "random", "shadow")
SPLIT_KEYS = {"stable_version", "canary_version", "canary_weight", "shadow_weight"}
CONFIG_KEYS = SPLIT_KEYS | {"updated_at", "rollout"}
CANARY_FILE_ENV = "TRITONRAG_CANARY_FILE"  # overrides the router's weights_file parameter (a ConfigMap mount)


@dataclass(frozen=True)
class RoutingConfig:
    """The traffic split between a stable and a canary version; validated on construction."""

    stable_version: int = 1
    canary_version: int | None = None
    canary_weight: float = 0.0  # share of routed (unpinned) requests served by the canary
    shadow_weight: float = 0.0  # share of stable-served requests mirrored to the canary

    def __post_init__(self) -> None:
        _check_version("stable_version", self.stable_version)
        if self.canary_version is not None:
            _check_version("canary_version", self.canary_version)
            if self.canary_version == self.stable_version:
                raise ValueError(f"canary_version and stable_version are both {self.stable_version}")
        for name in ("canary_weight", "shadow_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
            if self.canary_version is None and value > 0:
                raise ValueError(f"{name} is {value} but no canary_version is set")

    @classmethod
    def from_dict(cls, data: dict) -> RoutingConfig:
        if not isinstance(data, dict):
            raise ValueError(f"routing config must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown routing config keys: {', '.join(sorted(unknown))}")
        return cls(**{key: data[key] for key in SPLIT_KEYS if key in data})

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> RoutingConfig:
        """The default split from config.pbtxt parameters (used while no weights file exists)."""
        canary = params.get("canary_version", "").strip()
        return cls(
            stable_version=int(params.get("stable_version", "1")),
            canary_version=int(canary) if canary else None,
            canary_weight=float(params.get("canary_weight", "0")),
            shadow_weight=float(params.get("shadow_weight", "0")),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def versions(self) -> list[int]:
        return [v for v in (self.stable_version, self.canary_version) if v is not None]

    def describe(self) -> str:
        if self.canary_version is None:
            return f"stable {self.stable_version} 100%, no canary"
        text = f"stable {self.stable_version} {1 - self.canary_weight:.1%}, canary {self.canary_version} {self.canary_weight:.1%}"
        return text + (f", shadow {self.shadow_weight:.1%} to {self.canary_version}" if self.shadow_weight else "")


def _check_version(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# ---- changes an operator makes -------------------------------------------------------------


def set_split(config: RoutingConfig, **changes) -> RoutingConfig:
    """A new config with some fields changed (None leaves a field as it is); validated."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


def promote(config: RoutingConfig) -> RoutingConfig:
    """The canary becomes the stable version and takes all traffic."""
    if config.canary_version is None:
        raise ValueError("there is no canary to promote")
    return RoutingConfig(stable_version=config.canary_version)


def rollback(config: RoutingConfig) -> RoutingConfig:
    """No more traffic (nor shadow traffic) to the canary; it stays named, at 0%."""
    return dataclasses.replace(config, canary_weight=0.0, shadow_weight=0.0)


# ---- routing one request --------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where one request goes: the version that answers, how it was chosen, an optional mirror."""

    version: int
    mode: str  # one of MODES except "shadow"
    shadow: int | None = None  # version that also gets a copy (output discarded)


def sticky_fraction(key: str | bytes) -> float:
    """A stable hash of the key to [0, 1): the same on every process, host and restart."""
    data = key.encode("utf-8") if isinstance(key, str) else key
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2.0**64


def choose(
    config: RoutingConfig, key: str | bytes | None = None, pin: int | None = None, rng: random.Random | None = None
) -> Route:
    """Route one request (see the module docstring for the rules)."""
    if pin is not None:
        return Route(pin, "pinned")
    rng = rng or random
    if key:
        fraction, mode = sticky_fraction(key), "sticky"
    else:
        fraction, mode = rng.random(), "random"
    canary = config.canary_version
    if canary is not None and fraction < config.canary_weight:
        return Route(canary, mode)
    shadow = canary if canary is not None and config.shadow_weight > 0 and rng.random() < config.shadow_weight else None
    return Route(config.stable_version, mode, shadow)


def avoid_dead(route: Route, config: RoutingConfig, dead: set[int], model: str = "generator") -> Route:
    """`route`, unless its version's stub has died (tritonrag.triton.stubs): then the other routed
    version takes the request (a sticky key moves while its version is down), a mirror to a dead
    version is dropped, and a pin to one is refused UNAVAILABLE (the caller asked for that version)."""
    if route.shadow in dead:
        route = dataclasses.replace(route, shadow=None)
    if route.version not in dead:
        return route
    reason = f"{model} version {route.version} is not healthy: its stub process exited"
    if route.mode == "pinned":
        raise Unavailable(f"{reason}; unpin the request or retry once the version is reloaded")
    for version in config.versions():
        if version not in dead:
            return Route(version, route.mode)
    raise Unavailable(f"{reason}, and no other routed version is healthy; retry once the server is restarted")


def parse_pin(raw: bytes | str | None) -> int | None:
    """The request's `model_version` input: empty or absent = not pinned; else a positive integer."""
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    text = text.strip()
    if not text:
        return None
    # ASCII digits only ("²".isdigit() is True but int() refuses it), and short: int() of thousands
    # of digits raises ValueError; no version number has more than 9 digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) < 1:
        raise InvalidInput(f"model_version must be a positive integer (a generator version), got {text[:32]!r}")
    return int(text)


def check_pin(pin: int, is_ready: Callable[[int], bool], config: RoutingConfig, model: str = "generator") -> int:
    """Refuse a pin to a version that is not loaded, with a message naming what is served."""
    if not is_ready(pin):
        served = ", ".join(str(v) for v in config.versions())
        raise InvalidInput(
            f"{model} version {pin} is not available (not in the repository or not loaded); "
            f"routed versions are {served}"
        )
    return pin


# ---- the weights file -----------------------------------------------------------------------


def canary_file_path(parameter: str, repository_root: Path | str) -> Path:
    """The weights file: $TRITONRAG_CANARY_FILE, else the router's `weights_file` parameter with
    `${TRITONRAG_ARTIFACTS}` expanded (default: artifacts/ beside the repository); absolute, links kept."""
    override = os.environ.get(CANARY_FILE_ENV, "").strip()
    if override:
        return Path(os.path.abspath(os.path.expanduser(override)))
    root = os.environ.get("TRITONRAG_ARTIFACTS", str(Path(repository_root).absolute().parent / "artifacts"))
    value = os.path.expandvars(parameter.replace("${TRITONRAG_ARTIFACTS}", root))
    path = Path(value) if Path(value).is_absolute() else Path(repository_root) / value
    return Path(os.path.abspath(path))


def read_file(path: Path | str) -> tuple[RoutingConfig, dict | None]:
    """The split and the rollout section (raw; tritonrag.triton.rollout parses it), if any."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    config = RoutingConfig.from_dict(data)
    rollout = data.get("rollout")
    if rollout is not None and not isinstance(rollout, dict):
        raise ValueError(f"{path}: rollout must be a JSON object, got {type(rollout).__name__}")
    return config, rollout


def read_config(path: Path | str) -> RoutingConfig:
    return read_file(path)[0]


def write_config(path: Path | str, config: RoutingConfig, rollout: dict | None = None) -> None:
    """Replace the file atomically (temporary file + rename) so readers never see a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**config.to_dict(), "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if rollout is not None:
        data["rollout"] = rollout
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class WeightsFile:
    """The current split: the JSON file when there is one, else the default; re-read on change.

    `current()` costs one stat(); the file is parsed again only when its inode, size or
    mtime changed (stat follows symlinks: a swapped ConfigMap `..data` link is a new inode).
    A file that does not parse or validate is reported in `error` and the last good split
    stays in force (a typo must not move traffic). `rollout` is the file's rollout section.
    """

    def __init__(self, path: Path | str, default: RoutingConfig):
        self.path = Path(path)
        self.default = default
        self.error: str | None = None
        self.rollout: dict | None = None
        self._config = default
        self._signature: tuple | None = None
        self._lock = threading.Lock()

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> RoutingConfig:
        signature = self._stat()
        if signature != self._signature:
            with self._lock:
                if signature != self._signature:
                    self._reload(signature)
        return self._config

    def _reload(self, signature: tuple | None) -> None:
        self._signature = signature
        if signature is None:
            self._config, self.rollout, self.error = self.default, None, None
            return
        try:
            (self._config, self.rollout), self.error = read_file(self.path), None
        except (OSError, ValueError, TypeError) as exc:
            self.error = f"ignoring {self.path}: {exc}"
