"""Operator settings: the model archive's model-config.yaml `handler:` section, then OBJDETECT_* environment.

The archive carries a model version's defaults; the environment (an ECS task definition, a shell)
overrides them per deployment. A bad value stops the worker at load with a message that names it,
rather than serving with a guess.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .fetch import FetchPolicy

ENV_PREFIX = "OBJDETECT_"
# The speed switches (the last two act only on a GPU) and the CPU runtime.
SPEED_SWITCHES = ("jpeg_draft", "pre_resize", "channels_last", "fold_batch_norms", "cuda_fp16", "cuda_jpeg_decode")
RUNTIMES = ("torch", "openvino")
CPU_PRECISIONS = ("fp32", "bf16")
# The exact path: every speed switch off, eager torch. Its results equal `model(images)` on the
# same device (tests/test_accuracy.py).
EXACT_PATH: dict[str, Any] = {**dict.fromkeys(SPEED_SWITCHES, False), "runtime": "torch"}


@dataclass(frozen=True)
class Settings:
    # Largest image, in pixels, the service decodes; larger ones are refused from their header.
    max_pixels: int = 40_000_000
    # Score threshold when a request names none.
    default_threshold: float = 0.5
    # Image URLs: download cap, timeouts, and who may be fetched from.
    max_download_bytes: int = 20 * 1024 * 1024
    fetch_connect_timeout_s: float = 3.0
    fetch_read_timeout_s: float = 10.0
    fetch_total_timeout_s: float = 20.0
    max_redirects: int = 3
    # Empty: any public host. Otherwise only these hosts ("images.example.com", or "*.example.com").
    url_allowed_hosts: tuple[str, ...] = ()
    # Private networks an operator trusts for image URLs (e.g. an internal image host). Empty: none.
    url_trusted_networks: tuple[str, ...] = ()
    # When set, predictions need "Authorization: Bearer <key>" or "X-API-Key: <key>" with one of them.
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # never in logs
    # Torch intra-op threads per worker; 0: the cores divided among the model's workers.
    torch_threads: int = 0
    # Speed (docs/benchmarks.md): the SPEED_SWITCHES.
    # jpeg_draft: decode a JPEG at 1/2, 1/4 or 1/8 scale when the model would shrink it anyway.
    jpeg_draft: bool = True
    # pre_resize: shrink what the model would shrink while still uint8 (antialiased), before float.
    pre_resize: bool = True
    # channels_last: NHWC convolutions (oneDNN on a CPU, tensor cores on a GPU): faster, and summed
    # in another order, so scores differ from the exact path's in their last digits.
    channels_last: bool = True
    # fold_batch_norms: each BatchNorm folded into the convolution before it (objdetect/fold.py).
    fold_batch_norms: bool = True
    # On a GPU: autocast to float16, and decode JPEGs with nvJPEG on the GPU.
    cuda_fp16: bool = True
    cuda_jpeg_decode: bool = True
    # On a CPU (objdetect/openvino_runtime.py): "openvino" runs the backbone, RPN head and box head in
    # OpenVINO, "torch" all of it eagerly; cpu_precision "bf16" where the CPU has it natively
    # (avx512_bf16, AMX: else fp32, logged), "fp32" for results equal to eager torch's. Defaults:
    # the fastest measured (docs/performance.md); without OpenVINO installed, torch.
    runtime: str = "openvino"
    cpu_precision: str = "bf16"
    # With OpenVINO: RoIAlign runs as one weighted gather over every level (objdetect/roi_align.py),
    # not torchvision's one-thread CPU kernel level by level; results equal to float rounding.
    gather_roialign: bool = True
    # The worker's malloc keeps up to 64 MiB of freed memory mapped, so a request's tensors do not
    # fault their pages back in on every request (objdetect/allocator.py; glibc only).
    keep_freed_memory: bool = True
    # A worker refuses to start without a usable GPU (on in the ECS task definition): a GPU
    # instance whose driver or device is broken fails its health check and is replaced, rather
    # than serving from its CPU at a tenth of the speed.
    require_cuda: bool = False
    # When set (the ECS task definition sets it), each request's JSON log line is also in CloudWatch's
    # embedded metric format, under this namespace (objdetect/telemetry.py).
    cloudwatch_namespace: str = ""

    @classmethod
    def load(cls, handler_config: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ) -> "Settings":
        values: dict[str, Any] = {}
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in (handler_config or {}).items():
            if key not in known:
                raise ValueError(f"unknown handler setting {key!r}; known: {', '.join(known)}")
            values[key] = _coerce(known[key], value)
        for name, setting in known.items():
            env_value = environ.get(ENV_PREFIX + name.upper())
            if env_value is not None:
                values[name] = _coerce(setting, env_value)
        settings = cls(**values)
        settings._validate()
        return settings

    def fetch_policy(self) -> FetchPolicy:
        """What image URLs may reach and take: only these settings travel to the fetch (not the API keys)."""
        return FetchPolicy(
            max_bytes=self.max_download_bytes,
            connect_timeout_s=self.fetch_connect_timeout_s,
            read_timeout_s=self.fetch_read_timeout_s,
            total_timeout_s=self.fetch_total_timeout_s,
            max_redirects=self.max_redirects,
            allowed_hosts=self.url_allowed_hosts,
            trusted_networks=tuple(ipaddress.ip_network(n, strict=False) for n in self.url_trusted_networks),
        )

    def _validate(self) -> None:
        positive = ("max_pixels", "max_download_bytes", "fetch_connect_timeout_s",
                    "fetch_read_timeout_s", "fetch_total_timeout_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"setting {name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.default_threshold <= 1:
            raise ValueError(f"setting default_threshold must be within 0..1, got {self.default_threshold}")
        if self.max_redirects < 0 or self.torch_threads < 0:
            raise ValueError("settings max_redirects and torch_threads must not be negative")
        for name, choices in (("runtime", RUNTIMES), ("cpu_precision", CPU_PRECISIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"setting {name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        try:
            self.fetch_policy()
        except ValueError as error:
            raise ValueError(f"setting url_trusted_networks: {error}") from None


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    """Environment values are strings and YAML values are typed: bring both to the field's type."""
    kind = field.type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return str(value).strip().lower() in ("1", "true", "yes", "on")
            raise ValueError
        if kind.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items if str(item).strip())
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value.strip().lower()
    except (TypeError, ValueError):
        raise ValueError(f"setting {field.name} must be {kind}, got {value!r}") from None
    raise TypeError(f"unsupported setting type {kind}")
