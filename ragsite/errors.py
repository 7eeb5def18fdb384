class FieldError(ValueError):
    """Bad input traced to one field; the API answers 400 with "field: message", a command exits with it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
