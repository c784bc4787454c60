"""Module attributes that raise when used, so an accidental real use is loud."""


class StandIn:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute):
        return StandIn(f"{self._name}.{attribute}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is a test stand-in: the real package is not installed")

    def __mro_entries__(self, bases):  # `class X(torchvision.Something)` still defines a class
        return (object,)


def module_getattr(module_name: str):
    def __getattr__(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return StandIn(f"{module_name}.{attribute}")

    return __getattr__
