"""TorchServe's management API (loopback only), as the tools and the health check use it."""

from __future__ import annotations

import requests

DEFAULT_URL = "http://127.0.0.1:8081"


class ManagementError(Exception):
    """Something the operator must read, as it is."""


class Management:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout_s: float = 300):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, **params) -> object:
        try:
            response = requests.request(method, self.url + path, params=params or None,
                                        headers=self.headers, timeout=self.timeout_s)
        except requests.ConnectionError:
            raise ManagementError(f"cannot reach TorchServe's management API at {self.url}: is TorchServe running? "
                                  "(it listens on loopback only; in ECS use ECS Exec)") from None
        except requests.Timeout:
            raise ManagementError(f"{method} {path} took longer than {self.timeout_s:.0f} s") from None
        if not response.ok:
            raise ManagementError(f"TorchServe refused {method} {path}: HTTP {response.status_code}: {_reason(response)}")
        try:
            return response.json()
        except ValueError:
            return response.text

    def models(self) -> list[str]:
        return [m["modelName"] for m in self.call("GET", "/models", limit=1000)["models"]]

    def versions(self, name: str) -> list[dict]:
        return self.call("GET", f"/models/{name}/all")

    def default_version(self, name: str) -> str:
        return self.call("GET", f"/models/{name}")[0]["modelVersion"]

    def describe(self, name: str, version: str | None = None) -> list[dict]:
        return self.call("GET", f"/models/{name}/{version}" if version else f"/models/{name}/all")

    def ready(self, name: str) -> bool:
        """Whether the model's default version has a READY worker: what serves (TorchServe's /ping
        says Healthy before any worker has loaded)."""
        try:
            return any(w.get("status") == "READY" for m in self.call("GET", f"/models/{name}") for w in m.get("workers", []))
        except (ManagementError, TypeError, AttributeError):
            return False


def _reason(response: requests.Response) -> str:
    try:
        return response.json().get("message", response.text)
    except (ValueError, AttributeError):
        return response.text.strip()
