"""The one error a request can meet: it becomes that request's JSON error body, and the worker keeps serving."""


class RequestError(Exception):
    """Why one request is answered with an error instead of detections. `code` is stable for clients,
    `message` is for people. A 4xx when the request was at fault; a 5xx when the service failed on it."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message}
