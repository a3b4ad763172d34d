"""The one result type: what the server said about one image, as the JSON Lines output stores it."""

from __future__ import annotations

from dataclasses import dataclass

# TorchServe's answers when it is busy (queue full) or a worker died; ours while a server drains.
RETRIED_STATUSES = frozenset({503, 507})


@dataclass(frozen=True)
class Detection:
    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the upright image's pixels

    def to_json(self) -> dict:
        return {"label": self.label, "class_id": self.class_id, "score": self.score, "box": list(self.box)}

    @classmethod
    def from_json(cls, data: dict) -> "Detection":
        return cls(data["label"], data["class_id"], data["score"], tuple(data["box"]))


@dataclass(frozen=True)
class Result:
    """One image: its size and detections, or why there are none.

    `error` is the server's code (`corrupt_image`, ...), TorchServe's exception type for answers its
    frontend gives (`ServiceUnavailableException`, ...), `http_<status>` for a body that is neither,
    or the client's own: `connection_failed`, `timeout`, `unreadable`.
    """

    source: str
    width: int | None = None
    height: int | None = None
    detections: tuple[Detection, ...] = ()
    error: str | None = None
    message: str | None = None
    status: int | None = None  # the HTTP status; None when no answer came
    request_id: str | None = None  # the server's id for the request (its X-Request-Id), for its logs
    model: str | None = None  # the model and version that answered (in a fleet: the task's release)
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def transient(self) -> bool:
        """A failure of the service, not of the image: worth sending again (retries, --resume)."""
        return self.error in ("connection_failed", "timeout") or self.status in RETRIED_STATUSES

    def to_json(self) -> dict:
        if self.ok:
            return {"source": self.source, "model": self.model, "version": self.version, "width": self.width,
                    "height": self.height, "detections": [d.to_json() for d in self.detections]}
        return {"source": self.source, "error": self.error, "message": self.message, "status": self.status,
                "request_id": self.request_id}

    @classmethod
    def from_json(cls, data: dict) -> "Result":
        if data.get("error") is None:
            return cls(data["source"], data["width"], data["height"],
                       tuple(Detection.from_json(d) for d in data["detections"]),
                       model=data.get("model"), version=data.get("version"))
        return cls(data["source"], error=data["error"], message=data.get("message"), status=data.get("status"),
                   request_id=data.get("request_id"))
