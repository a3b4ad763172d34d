"""The one error a request can cause: it becomes a 4xx JSON body, and the worker keeps serving."""


class RequestError(Exception):
    """Something wrong with what the client sent; `code` is stable for clients, `message` is for people."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message}
