"""Per-version model parameters: config.pbtxt keys `v<N>:<key>` override `<key>` for version N.

Triton's config.pbtxt is per model, not per version, while each version under
`version_policy` may need its own engine settings (precision, cache size, weights). So
a version's difference is written beside the shared settings, in the same file:

    parameters { key: "dtype"    value: { string_value: "float32" } }
    parameters { key: "v2:dtype" value: { string_value: "bfloat16" } }   # version 2 only

and the backend resolves its own version's view with `version_parameters`.
"""

from __future__ import annotations

import re

_OVERRIDE = re.compile(r"^v(\d+):(\w+)$")


def split_parameters(params: dict[str, str]) -> tuple[dict[str, str], dict[int, dict[str, str]]]:
    """(shared parameters, {version: overrides}); a malformed `v…:` key is an error, not ignored."""
    shared: dict[str, str] = {}
    overrides: dict[int, dict[str, str]] = {}
    for key, value in params.items():
        match = _OVERRIDE.match(key)
        if match:
            overrides.setdefault(int(match.group(1)), {})[match.group(2)] = value
        elif ":" in key:
            raise ValueError(f"parameter {key!r}: a per-version key is written v<version>:<name>, e.g. v2:dtype")
        else:
            shared[key] = value
    return shared, overrides


def version_parameters(params: dict[str, str], version: int | str) -> dict[str, str]:
    """The parameters one version sees: shared keys, overridden by its own `v<version>:` keys."""
    shared, overrides = split_parameters(params)
    return {**shared, **overrides.get(int(version), {})}
